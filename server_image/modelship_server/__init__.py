"""modelship_server: the inference core of the serving image (Open Inference Protocol on ONNX Runtime)."""

__version__ = "0.1.0"
