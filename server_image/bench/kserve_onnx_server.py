"""KServe's Python ModelServer serving ONNX models through ONNX Runtime: the competitor
that compare.py starts (with the python of a venv where kserve is installed).

    MODELS=mlp=/path/mlp.onnx,compute=/path/c.onnx HTTP_PORT=8080 GRPC_PORT=8081 [INTRA_OP_THREADS=1] \
        python kserve_onnx_server.py

Settings from the environment, because KServe parses sys.argv itself at import.
Latency logging is off so KServe is not charged for a log line per request.
"""

import os

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer

_DT = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64",
       np.dtype(np.int32): "INT32", np.dtype(np.bool_): "BOOL"}


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ.get("INTRA_OP_THREADS", "0"))  # 0: ORT's default
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        feeds = {i.name: i.as_numpy() for i in payload.inputs}
        outs = self.session.run(self.output_names, feeds)
        outputs = []
        for name, arr in zip(self.output_names, outs):
            o = InferOutput(name=name, shape=list(arr.shape), datatype=_DT[arr.dtype])
            o.set_data_from_numpy(arr, binary_data=True)  # gRPC: raw_output_contents, as tritonclient reads
            outputs.append(o)
        return InferResponse(model_name=self.name, infer_outputs=outputs, response_id=payload.id,
                             from_grpc=payload.from_grpc, use_binary_outputs=not payload.from_grpc)


if __name__ == "__main__":
    models = []
    for spec in os.environ["MODELS"].split(","):
        name, path = spec.split("=", 1)
        models.append(OnnxModel(name, path))
    ModelServer(
        http_port=int(os.environ.get("HTTP_PORT", "8080")),
        grpc_port=int(os.environ.get("GRPC_PORT", "8081")),
        workers=1,
        enable_latency_logging=False,
    ).start(models)
