"""The ONNX Runtime side of the gofront prototype: runs the batches the Go front end sends.

    python worker.py --socket /tmp/w.sock mlp=/repo/mlp/1/model.onnx:16 orient=/repo/orient/1/model.onnx:8

Each `NAME=PATH:MAX_BATCH` is one model (MAX_BATCH 0: no batch dimension). Sessions use
modelship-server's settings for the benchmark: one intra-op thread, graph optimization "all", no
spinning. One thread per connection (the front end opens one per model); ONNX Runtime releases the
GIL while it runs. The framing is described in worker.go. Only numpy and onnxruntime are needed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading

import numpy as np
import onnxruntime as ort

# KServe v2 datatype <-> numpy, for the fixed-size types the prototype carries.
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
          "FP16": np.float16, "UINT32": np.uint32, "INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64,
          "INT64": np.int64, "FP64": np.float64}
ORT_TYPES = {f"tensor({n})": k for k, n in (
    ("BOOL", "bool"), ("UINT8", "uint8"), ("INT8", "int8"), ("UINT16", "uint16"), ("INT16", "int16"),
    ("FP16", "float16"), ("UINT32", "uint32"), ("INT32", "int32"), ("FP32", "float"), ("UINT64", "uint64"),
    ("INT64", "int64"), ("FP64", "double"))}
NUMPY_TO_V2 = {np.dtype(v): k for k, v in DTYPES.items()}


def session(path: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def specs(args, max_batch: int) -> list[dict]:
    out = []
    for a in args:
        if a.type not in ORT_TYPES:
            raise SystemExit(f"worker: tensor {a.name!r} has type {a.type}, which the prototype does not carry")
        shape = [d if isinstance(d, int) and d >= 0 else -1 for d in a.shape]
        if max_batch > 0 and shape:
            shape[0] = -1
        out.append({"name": a.name, "datatype": ORT_TYPES[a.type], "shape": shape})
    return out


def recv_exact(conn: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = conn.recv_into(view[got:])
        if k == 0:
            raise EOFError
        got += k
    return buf


def decode_run(body: bytearray) -> tuple[str, dict[str, np.ndarray]]:
    view = memoryview(body)
    (n,) = struct.unpack_from("<H", view, 0)
    model, at = bytes(view[2:2 + n]).decode(), 2 + n
    (count,), at = struct.unpack_from("<H", view, at), at + 2
    feeds = {}
    for _ in range(count):
        (n,) = struct.unpack_from("<H", view, at)
        name, at = bytes(view[at + 2:at + 2 + n]).decode(), at + 2 + n
        n = view[at]
        dtype, at = bytes(view[at + 1:at + 1 + n]).decode(), at + 1 + n
        rank = view[at]
        dims, at = struct.unpack_from(f"<{rank}q", view, at + 1), at + 1 + 8 * rank
        (size,), at = struct.unpack_from("<Q", view, at), at + 8
        feeds[name] = np.frombuffer(view[at:at + size], DTYPES[dtype]).reshape(dims)
        at += size
    return model, feeds


def encode_answer(names: list[str], outputs: list[np.ndarray]) -> list[bytes | memoryview]:
    parts: list[bytes | memoryview] = [b"", b"\0" + struct.pack("<H", len(outputs))]
    for name, arr in zip(names, outputs):
        arr = np.ascontiguousarray(arr)
        dt, nm = NUMPY_TO_V2[arr.dtype].encode(), name.encode()
        parts.append(struct.pack(f"<H{len(nm)}sB{len(dt)}sB{arr.ndim}qQ", len(nm), nm, len(dt), dt, arr.ndim,
                                 *arr.shape, arr.nbytes))
        parts.append(memoryview(arr).cast("B"))
    parts[0] = struct.pack("<I", sum(len(p) for p in parts[1:]))
    return parts


def send_parts(conn: socket.socket, parts: list) -> None:
    """sendmsg (one copy-free gather write), continued where a partial write stopped."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = conn.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


def serve(conn: socket.socket, sessions: dict, hello: bytes) -> None:
    with conn:
        conn.sendall(struct.pack("<I", len(hello)) + hello)
        try:
            while True:
                (n,) = struct.unpack("<I", recv_exact(conn, 4))
                model, feeds = decode_run(recv_exact(conn, n))
                s, names = sessions[model]
                try:
                    parts = encode_answer(names, s.run(names, feeds))
                except Exception as exc:  # noqa: BLE001 - ORT's own error types; the front answers per request
                    msg = b"\1" + str(exc).encode(errors="replace")[:4000]
                    parts = [struct.pack("<I", len(msg)), msg]
                send_parts(conn, parts)
        except (EOFError, ConnectionError):
            return


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", required=True, help="Unix socket path to listen on")
    p.add_argument("models", nargs="+", metavar="NAME=PATH:MAX_BATCH")
    args = p.parse_args()
    sessions, meta = {}, []
    for spec in args.models:
        name, rest = spec.split("=", 1)
        path, max_batch = rest.rsplit(":", 1)
        s = session(path)
        names = [o.name for o in s.get_outputs()]
        sessions[name] = (s, names)
        meta.append({"name": name, "max_batch": int(max_batch), "inputs": specs(s.get_inputs(), int(max_batch)),
                     "outputs": specs(s.get_outputs(), int(max_batch))})
    hello = json.dumps({"models": meta}).encode()
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(args.socket)
    srv.listen(16)
    print(f"worker: {', '.join(sessions)} on {args.socket}", file=sys.stderr, flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, sessions, hello), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
