"""KServe v2 GRPCInferenceService on grpc.aio, using tritonclient's generated modules.

`service_pb2` / `service_pb2_grpc` ship with tritonclient, so the messages are
exactly the ones tritonclient (and Triton) use and no .proto copy is kept here.
Errors become gRPC status codes (errors.ServingError carries them); a missing
model's ModelReady answers ready=false, not NOT_FOUND, as Triton does.
"""

from __future__ import annotations

import logging

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from .. import __version__
from ..codecs import grpc as codec
from ..dataplane import DataPlane
from ..errors import ServingError

log = logging.getLogger(__name__)


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    @staticmethod
    async def _fail(context, exc: ServingError):
        await context.abort(exc.grpc_code, exc.message)

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        md = self.dp.server_metadata()
        return pb.ServerMetadataResponse(name=md["name"], version=__version__, extensions=md["extensions"])

    async def ModelMetadata(self, request, context):
        try:
            md = self.dp.model_metadata(request.name, request.version)
        except ServingError as exc:
            await self._fail(context, exc)
        return pb.ModelMetadataResponse(
            name=md["name"],
            versions=md["versions"],
            platform=md["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in md["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in md["outputs"]],
        )

    async def ModelConfig(self, request, context):
        try:
            config = self.dp.model_config(request.name, request.version)
        except ServingError as exc:
            await self._fail(context, exc)
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request, context):
        try:
            stats = self.dp.statistics(request.name, request.version)
        except ServingError as exc:
            await self._fail(context, exc)
        return pb.ModelStatisticsResponse(model_stats=[s.to_proto() for s in stats])

    async def RepositoryIndex(self, request, context):
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**m) for m in self.dp.repository_index(request.ready)]
        )

    async def ModelInfer(self, request, context):
        try:
            self.dp.registry.get(request.model_name, request.model_version)  # 404 / 503 first
            req = codec.decode_request(request)
            remaining = context.time_remaining()
            if remaining is not None and (req.timeout_s is None or remaining < req.timeout_s):
                req.timeout_s = max(remaining, 1e-6)
            resp = await self.dp.infer(req)
            return codec.encode_response(resp)
        except ServingError as exc:
            await self._fail(context, exc)

    async def ModelStreamInfer(self, request_iterator, context):
        async for request in request_iterator:
            try:
                resp = await self.dp.infer(codec.decode_request(request))
                yield pb.ModelStreamInferResponse(infer_response=codec.encode_response(resp))
            except ServingError as exc:
                yield pb.ModelStreamInferResponse(error_message=exc.message)

    async def _unsupported(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this extension is not supported by this server")

    RepositoryModelLoad = RepositoryModelUnload = _unsupported
    SystemSharedMemoryStatus = SystemSharedMemoryRegister = SystemSharedMemoryUnregister = _unsupported
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _unsupported
    TraceSetting = LogSettings = _unsupported


def make_server(dataplane: DataPlane, *, max_message_size: int) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_size),
            ("grpc.max_send_message_length", max_message_size),
            ("grpc.so_reuseport", 0),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(dataplane), server)
    return server
