"""An MLServer custom runtime serving an ONNX model through ONNX Runtime: the MLServer
competitor that compare.py starts with `mlserver start` (from a venv with mlserver).

model-settings.json: {"name": "...", "implementation": "mlserver_onnx_runtime.OnnxRuntime",
                      "parameters": {"uri": "/path/model.onnx"}}
INTRA_OP_THREADS in the environment sets ONNX Runtime's intra-op threads (default: ORT's own).
"""

import os

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ.get("INTRA_OP_THREADS", "0"))  # 0: ORT's default
        self.session = ort.InferenceSession(self.settings.parameters.uri, so, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        outs = self.session.run(self.output_names, feeds)
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(n, a) for n, a in zip(self.output_names, outs)],
        )
