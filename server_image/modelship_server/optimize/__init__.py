"""`modelship optimize`: build candidate variants of an ONNX model, gate them on accuracy,
time them against the original, and keep the fastest one that passes (or the original).

It runs in the serving image so that the timings come from the runtime that will serve the
model. One concept per module: inputs, candidates, gate, timing, report, search, command.
"""
