"""gRPC core's experiments for this server, set before anything imports grpc (tritonclient does).

gRPC core reads GRPC_EXPERIMENTS once, when it starts, so this module is imported by the CLI ahead
of every module that imports grpc. A GRPC_EXPERIMENTS already in the environment wins (even an empty
one: gRPC's own defaults).

Without the EventEngine listener (`-event_engine_listener`; the listener gRPC used before it, still
shipped) grpc.aio's server wakes its threads less per call: at 8 concurrent ModelInfer calls on one
core, ~13 context switches per call became ~9 and the server's CPU per call fell ~7 %
(docs/server-benchmarks.md, "gRPC ModelInfer: where the rest goes", issue 13).
"""

from __future__ import annotations

import os

GRPC_EXPERIMENTS = "-event_engine_listener"

os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
