"""gRPC counterpart of the monitoring endpoints: service `modelship.monitoring.v1.Monitoring`.

KServe's GRPCInferenceService has no method to carry a label, and tritonclient cannot call a
method it does not know, so this is a small extra service whose messages are the same JSON
documents as the HTTP endpoints (bytes in, bytes out; no .proto to compile or ship):

    Feedback:   {"model": "m", "version": "", "items": [{"id": "...", "label": 1}]}
                -> {"joined": n, "results": [...]}   (INVALID_ARGUMENT naming each failure otherwise)
    Monitoring: {"model": "m", "version": ""} -> the GET /v2/models/m/monitoring document

    channel.unary_unary("/modelship.monitoring.v1.Monitoring/Feedback")(json.dumps(doc).encode())
"""

from __future__ import annotations

import json

import grpc

from ..dataplane import DataPlane
from ..errors import InvalidInput, ServingError

SERVICE = "modelship.monitoring.v1.Monitoring"


def _doc(raw: bytes) -> dict:
    try:
        doc = json.loads(raw or b"{}")
    except ValueError as exc:
        raise InvalidInput(f"the message is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), str):
        raise InvalidInput(f'expected {{"model": "<name>", ...}}, got {str(doc)[:120]}')
    return doc


def handler(dp: DataPlane) -> grpc.GenericRpcHandler:
    def answer(fn):
        async def call(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return json.dumps(fn(_doc(raw))).encode()
            except ServingError as exc:
                code, message = exc.grpc_code, exc.message
            context.set_code(code)
            context.set_details(message)
            return b""
        return grpc.unary_unary_rpc_method_handler(call)

    def feedback(doc: dict) -> dict:
        items = doc.get("items")
        if not isinstance(items, list):
            raise InvalidInput(f"field 'items': expected a list of {{\"id\", \"label\"}}, got {str(items)[:120]}")
        results = dp.feedback(doc["model"], str(doc.get("version", "")), items)
        failed = [r for r in results if r["outcome"] != "joined"]
        if failed:
            raise InvalidInput("; ".join(f"{r['outcome']}: {r['error']}" for r in failed[:5])
                               + f" ({len(results) - len(failed)} of {len(results)} joined)")
        return {"joined": len(results), "results": results}

    def monitoring(doc: dict) -> dict:
        return dp.monitoring_snapshot(doc["model"], str(doc.get("version", "")))

    return grpc.method_handlers_generic_handler(SERVICE, {"Feedback": answer(feedback), "Monitoring": answer(monitoring)})
