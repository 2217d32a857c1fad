"""Triton's statistics extension: per-model counters that `get_inference_statistics` reads.

Kept apart from Prometheus metrics because the wire shape is Triton's
(cumulative count + nanoseconds per stage, per batch size), and one object
renders both the REST JSON and the gRPC message from the same counters.
"""

from __future__ import annotations

import time

from tritonclient.grpc import service_pb2 as pb

_STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


class ModelStats:
    __slots__ = ("name", "version", "last_inference_ms", "inference_count", "execution_count", "durations", "batches")

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        self.last_inference_ms = 0
        self.inference_count = 0  # samples (batch elements) inferred
        self.execution_count = 0  # session runs
        self.durations = {s: [0, 0] for s in _STAGES}  # stage -> [count, ns]
        self.batches: dict[int, list[int]] = {}  # batch size -> [count, input_ns, infer_ns, output_ns]

    def request_done(self, ok: bool, ns: int) -> None:
        d = self.durations["success" if ok else "fail"]
        d[0] += 1
        d[1] += ns

    def queued(self, ns: int) -> None:
        d = self.durations["queue"]
        d[0] += 1
        d[1] += ns

    def executed(self, batch_size: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One session run of `batch_size` samples gathered from `requests` requests."""
        self.execution_count += 1
        self.inference_count += batch_size
        self.last_inference_ms = int(time.time() * 1000)
        for stage, ns in (("compute_input", input_ns), ("compute_infer", infer_ns), ("compute_output", output_ns)):
            d = self.durations[stage]
            d[0] += requests
            d[1] += ns * requests
        b = self.batches.get(batch_size)
        if b is None:
            b = self.batches[batch_size] = [0, 0, 0, 0]
        b[0] += 1
        b[1] += input_ns
        b[2] += infer_ns
        b[3] += output_ns

    def to_dict(self) -> dict:
        stats = {s: {"count": c, "ns": ns} for s, (c, ns) in self.durations.items()}
        stats["cache_hit"] = {"count": 0, "ns": 0}
        stats["cache_miss"] = {"count": 0, "ns": 0}
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": stats,
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": c, "ns": i},
                    "compute_infer": {"count": c, "ns": n},
                    "compute_output": {"count": c, "ns": o},
                }
                for size, (c, i, n, o) in sorted(self.batches.items())
            ],
        }

    def to_proto(self) -> pb.ModelStatistics:
        msg = pb.ModelStatistics(
            name=self.name,
            version=self.version,
            last_inference=self.last_inference_ms,
            inference_count=self.inference_count,
            execution_count=self.execution_count,
        )
        for stage, (c, ns) in self.durations.items():
            d = getattr(msg.inference_stats, stage)
            d.count, d.ns = c, ns
        for size, (c, i, n, o) in sorted(self.batches.items()):
            b = msg.batch_stats.add(batch_size=size)
            b.compute_input.count, b.compute_input.ns = c, i
            b.compute_infer.count, b.compute_infer.ns = c, n
            b.compute_output.count, b.compute_output.ns = c, o
        return msg
