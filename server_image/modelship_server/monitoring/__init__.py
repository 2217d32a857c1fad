"""Monitoring in the server: input/output profiles, drift against a reference, online quality
from feedback, and request capture (docs/monitoring.md).

One concept per module: `sketch` (mergeable fixed-bin histograms), `profile` (what a tensor
becomes as features, and their running statistics), `reference` (the frozen or loaded reference
profile and its file format), `drift` (PSI and a two-sample KS test, pure), `quality` (windowed
accuracy / precision / recall / F1, MAE / RMSE, pure), `feedback` (the bounded TTL store of
predictions by request id), `capture` (the batched, never-blocking record writer), `monitor`
(the per-model state the data plane and the endpoints use), and `profiler` (the child process
that profiles sampled requests, and the shared-memory ring they reach it through).
"""
