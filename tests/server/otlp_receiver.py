"""An OTLP trace receiver for tests: the protocol's real server side, not a mock.

The gRPC receiver serves `opentelemetry.proto.collector.trace.v1.TraceService` from the
opentelemetry-proto package (the definitions every OTLP exporter and collector are built
from); the HTTP one accepts `POST /v1/traces` with an ExportTraceServiceRequest body
(OTLP/HTTP protobuf). Both keep every span they receive, flattened, for assertions.
"""

from __future__ import annotations

import dataclasses
import http.server
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc


@dataclasses.dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict
    links: list[tuple[str, str]]  # (trace id, span id)
    status_code: int
    status_message: str
    resource: dict


def _value(v):  # an OTLP AnyValue as Python
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def flatten(request: pb.ExportTraceServiceRequest) -> list[Span]:
    out = []
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(
                    s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.kind,
                    s.start_time_unix_nano, s.end_time_unix_nano,
                    {a.key: _value(a.value) for a in s.attributes},
                    [(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                    s.status.code, s.status.message, resource,
                ))
    return out


class _Store:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self.exports = 0

    def add(self, request: pb.ExportTraceServiceRequest) -> None:
        spans = flatten(request)
        with self._lock:
            self._spans += spans
            self.exports += 1

    def spans(self, trace_id: str | None = None) -> list[Span]:
        with self._lock:
            return [s for s in self._spans if trace_id is None or s.trace_id == trace_id]


class _Servicer(pb_grpc.TraceServiceServicer):
    def __init__(self, store: _Store) -> None:
        self.store = store

    def Export(self, request, context):  # noqa: N802 - the service's method name
        self.store.add(request)
        return pb.ExportTraceServiceResponse()


class GrpcReceiver(_Store):
    """OTLP/gRPC on 127.0.0.1:<port>; `stop()` in a finally."""

    def __init__(self) -> None:
        super().__init__()
        self._server = grpc.server(ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_TraceServiceServicer_to_server(_Servicer(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop(0).wait(5)


class HttpReceiver(_Store):
    """OTLP/HTTP (protobuf) on 127.0.0.1:<port>/v1/traces; `stop()` in a finally."""

    def __init__(self) -> None:
        super().__init__()
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                store.add(pb.ExportTraceServiceRequest.FromString(body))
                reply = pb.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}/v1/traces"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
