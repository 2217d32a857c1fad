"""KServe v2 GRPCInferenceService on grpc.aio, using tritonclient's generated modules.

`service_pb2` ships with tritonclient, so the messages are exactly the ones
tritonclient (and Triton) use and no .proto copy is kept here. Errors become
gRPC status codes in one place (`_mapped`); a missing model's ModelReady
answers ready=false, not NOT_FOUND, as Triton does.

The two inference methods take the message as bytes and parse it themselves:
its size is charged to the byte budget before parsing (RESOURCE_EXHAUSTED with a
retry-after trailer when over), a message that does not parse is an
INVALID_ARGUMENT (in a stream: an error for that message, and the stream goes
on), and a large one is parsed and decoded off the event loop.

With auth on, one interceptor (`AuthInterceptor`) asks the gate before any method but
ServerLive/ServerReady runs: UNAUTHENTICATED or PERMISSION_DENIED with the gate's message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.message import DecodeError
from tritonclient.grpc import service_pb2 as pb

from .. import __version__
from ..auth import Gate
from ..auth.decide import FORBIDDEN, OPEN_GRPC_METHODS, UNAVAILABLE, Verdict
from ..budget import ByteBudget
from ..codecs import grpc as codec
from ..codecs import grpc_wire
from ..dataplane import DataPlane
from ..errors import InvalidInput, Overloaded, ServingError, Unavailable
from ..messages import InferRequest
from .grpc_monitoring import handler as monitoring_handler
from ..tracing import Tracer

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
OFFLOAD_DECODE_BYTES = 256 * 1024  # parse/decode work larger than this runs on a worker thread
SPLIT_MIN_BYTES = 16 * 1024  # messages larger than this have their tensor bytes split off, not copied


def _mapped(method):
    """Turn a ServingError (or a bug) raised by a unary method into its gRPC status."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ServingError as exc:
            code, message = exc.grpc_code, exc.message
            if isinstance(exc, Unavailable):
                context.set_trailing_metadata((("retry-after", str(exc.retry_after_s)),))
        except Exception as exc:  # noqa: BLE001 - a bug: say so, keep serving
            log.exception("gRPC %s failed", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
        # Set the status and return, rather than abort() from inside the except: the
        # exception's frames would hold the request (up to the message cap) in a
        # cycle until the garbage collector ran.
        del request
        context.set_code(code)
        context.set_details(message)
        return None

    return wrapper


def _parse(raw: bytes) -> pb.ModelInferRequest:
    try:
        return pb.ModelInferRequest.FromString(raw)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise InvalidInput(f"the ModelInferRequest message does not parse: {exc}") from None


def _parse_and_decode(raw: bytes) -> tuple[pb.ModelInferRequest, InferRequest | None]:
    msg = _parse(raw)
    return msg, codec.decode_request(msg)


class InferenceService:
    def __init__(self, dataplane: DataPlane, budget: ByteBudget | None = None, tracer: Tracer | None = None) -> None:
        self.dp = dataplane
        self.tracer = tracer
        self.budget = budget or ByteBudget(1 << 62)
        self.decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grpc-decode")

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        md = self.dp.server_metadata()
        return pb.ServerMetadataResponse(name=md["name"], version=__version__, extensions=md["extensions"])

    @_mapped
    async def ModelMetadata(self, request, context):
        md = self.dp.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=md["name"],
            versions=md["versions"],
            platform=md["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in md["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in md["outputs"]],
        )

    @_mapped
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=self.dp.model_config(request.name, request.version))

    @_mapped
    async def ModelStatistics(self, request, context):
        stats = self.dp.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[s.to_proto() for s in stats])

    @_mapped
    async def RepositoryIndex(self, request, context):
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in self.dp.repository_index(request.ready)]
        )

    async def _infer(self, raw: bytes, deadline_s: float | None, context=None, method: str = "ModelInfer",
                     encode=codec.encode_response):
        """One inference, traced when tracing is on and the request is sampled (its context from the metadata);
        the response as `encode` makes it (a message, or ModelInfer's serialized bytes)."""
        tracer = self.tracer
        authorization = _authorization(context) if context is not None and self.dp.mirror is not None else None
        if tracer is None or context is None:
            return await self._infer_untraced(raw, deadline_s, None, encode, authorization)
        parent = state = None
        for key, value in context.invocation_metadata() or ():
            if key == "traceparent":
                parent = value
            elif key == "tracestate":
                state = value
        trace = tracer.start(f"{SERVICE}/{method}", parent, state, {
            "rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method, "modelship.protocol": "grpc"})
        if trace is None:
            return await self._infer_untraced(raw, deadline_s, None, encode, authorization)
        error = None
        try:
            return await self._infer_untraced(raw, deadline_s, trace, encode, authorization)
        except BaseException as exc:
            error = exc.message if isinstance(exc, ServingError) else f"{type(exc).__name__}: {exc}"
            raise
        finally:
            trace.finish(error)

    async def _infer_untraced(self, raw: bytes, deadline_s: float | None, trace, encode,
                              authorization: str | None = None):
        """One inference from the message's bytes: budget, parse, look up, decode, run, encode."""
        size = len(raw)
        reserved = self.budget.try_reserve(size)
        if reserved < 0:
            raise Overloaded(self.budget.message(size))
        try:
            # Tensor bytes are split off the wire bytes (no copy) and only the rest is parsed;
            # what is left to parse or walk decides whether it is worth a thread handoff.
            split = grpc_wire.split_raw_contents(raw, OFFLOAD_DECODE_BYTES) if size > SPLIT_MIN_BYTES else None
            head, contents = split if split is not None else (raw, None)
            del split
            heavy = len(head) > OFFLOAD_DECODE_BYTES
            if heavy:
                msg = await asyncio.get_running_loop().run_in_executor(self.decoder, _parse, head)
            else:
                msg = _parse(head)
            del head
            self.dp.check_model(msg.model_name, msg.model_version, "grpc")  # 404 / 503 before decoding
            if contents is not None:
                heavy = heavy or codec.decode_work_bytes(msg, contents) > OFFLOAD_DECODE_BYTES
            try:
                if heavy:
                    req = await asyncio.get_running_loop().run_in_executor(
                        self.decoder, codec.decode_request, msg, contents)
                else:
                    req = codec.decode_request(msg, contents)
            except InvalidInput as exc:
                self.dp.count_rejected(msg.model_name, msg.model_version, "grpc", exc)
                raise
            del raw, msg, contents
            if deadline_s is not None and (req.timeout_s is None or deadline_s < req.timeout_s):
                req.timeout_s = max(deadline_s, 1e-6)
            req.authorization = authorization
            if trace is None:
                return encode(await self.dp.infer(req))
            trace.decoded_ns = time.perf_counter_ns()
            trace.attributes = {"modelship.model": req.model, "modelship.version": req.version}
            req.trace = trace
            result = await self.dp.infer(req)
            trace.encode_ns = time.perf_counter_ns()
            return encode(result)
        finally:
            self.budget.release(reserved)

    @_mapped
    async def ModelInfer(self, request: bytes, context):
        if self.tracer is None and self.dp.mirror is None:  # nothing to read from the metadata: one coroutine less
            return await self._infer_untraced(request, context.time_remaining(), None, codec.encode_response_bytes)
        return await self._infer(request, context.time_remaining(), context, encode=codec.encode_response_bytes)

    async def ModelStreamInfer(self, request_iterator, context):
        # Each message gets its own answer; a bad one is answered with its error and the stream goes on.
        async for raw in request_iterator:
            try:
                resp = await self._infer(raw, None, context, "ModelStreamInfer")
            except ServingError as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message,
                                                  infer_response=_echo_ids(raw))
            except Exception as exc:  # noqa: BLE001 - a bug: answer this message, keep the stream
                log.exception("gRPC ModelStreamInfer message failed")
                yield pb.ModelStreamInferResponse(error_message=f"internal error: {type(exc).__name__}: {exc}",
                                                  infer_response=_echo_ids(raw))
            else:
                yield pb.ModelStreamInferResponse(infer_response=resp)

    async def _unsupported(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this extension is not supported by this server")

    RepositoryModelLoad = RepositoryModelUnload = _unsupported
    SystemSharedMemoryStatus = SystemSharedMemoryRegister = SystemSharedMemoryUnregister = _unsupported
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _unsupported
    LogSettings = _unsupported

    @_mapped
    async def TraceSetting(self, request, context):
        changes = {k: list(v.value) for k, v in request.settings.items()}
        current = self.dp.trace_setting(request.model_name, changes)
        return pb.TraceSettingResponse(
            settings={k: pb.TraceSettingResponse.SettingValue(value=v) for k, v in current.items()})


def _echo_ids(raw: bytes) -> pb.ModelInferResponse:
    """The model and id of a failed stream message, when it parses, so the client can match the error."""
    try:
        msg = pb.ModelInferRequest.FromString(raw) if len(raw) < OFFLOAD_DECODE_BYTES else None
    except Exception:  # noqa: BLE001 - it did not parse: nothing to echo
        msg = None
    if msg is None:
        return pb.ModelInferResponse()
    try:
        return pb.ModelInferResponse(model_name=msg.model_name, model_version=msg.model_version, id=msg.id)
    except Exception:  # noqa: BLE001
        return pb.ModelInferResponse()


def _bytes_or(serialize):
    """ModelInfer answers with its response already serialized (encode_response_bytes); a
    message (or nothing, after an error) still goes through protobuf."""

    def serializer(response):
        return response if isinstance(response, bytes) else serialize(response)

    return serializer


_RAW = frozenset(("ModelInfer", "ModelStreamInfer"))  # methods that receive the message's bytes


def _handlers(service: InferenceService) -> grpc.GenericRpcHandler:
    """The service's method handlers, built from the proto descriptor (as the generated code does)."""
    desc = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for m in desc.methods:
        req_cls = getattr(pb, m.input_type.name)
        resp_cls = getattr(pb, m.output_type.name)
        deserializer = None if m.name in _RAW else req_cls.FromString
        serializer = _bytes_or(resp_cls.SerializeToString) if m.name == "ModelInfer" else resp_cls.SerializeToString
        impl = getattr(service, m.name)
        if m.client_streaming and m.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[m.name] = make(impl, request_deserializer=deserializer,
                                response_serializer=serializer)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


_CODES = {FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED, UNAVAILABLE: grpc.StatusCode.UNAVAILABLE}


def _refusal(handler: grpc.RpcMethodHandler, verdict: Verdict) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers the verdict's status and nothing else."""
    code = _CODES.get(verdict.outcome, grpc.StatusCode.UNAUTHENTICATED)

    async def refuse(request, context):  # noqa: ARG001
        await context.abort(code, verdict.message)

    async def refuse_stream(request_iterator, context):  # noqa: ARG001
        await context.abort(code, verdict.message)
        yield  # pragma: no cover - makes this an async generator, as a streaming handler must be

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse_stream)
    return grpc.unary_unary_rpc_method_handler(refuse)


def _authorization(context) -> str | None:
    """The call's `authorization` metadata (for the mirror to send again), if any."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """The gRPC side of the auth gate: one check per call, before its handler runs."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    async def intercept_service(self, continuation, details):
        if details.method.rsplit("/", 1)[-1] in OPEN_GRPC_METHODS:
            return await continuation(details)
        header = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value
                break
        verdict = self.gate.quick(header)
        if verdict is None:
            verdict = await self.gate.review(header)
        handler = await continuation(details)
        if verdict.allowed or handler is None:
            return handler
        return _refusal(handler, verdict)


def make_server(dataplane: DataPlane, *, max_message_size: int, budget: ByteBudget | None = None,
                gate: Gate | None = None, tracer: Tracer | None = None) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(gate)] if gate is not None else None,
        options=[
            ("grpc.max_receive_message_length", max_message_size),
            ("grpc.max_send_message_length", max_message_size),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((_handlers(InferenceService(dataplane, budget, tracer)), monitoring_handler(dataplane)))
    return server
