"""`python -m modelship_server.fit_config`: fit a rendered config.pbtxt to the model it serves.

The operator renders config.pbtxt from the ModelService spec without ever opening the model,
so the spec's batching defaults (max_batch_size 8, dynamic batching) would reach models that
cannot batch: a recurrent state `[2, batch, 128]`, a scalar input, a detector fixed at batch 1.
Triton refuses such a config and modelship-server fails to load it (`repository`), so the
serving pod runs this step after the model is in place (after `apply-variant`, so it sees the
file that is served) and before either server starts:

- batching `auto` (the user left spec.batching's sizes unset): a model that cannot batch gets
  max_batch_size 0 and no dynamic batching; the config is rewritten in place.
- batching `required` (the user set spec.batching.maxBatchSize, maxQueueDelayMicroseconds or
  preferredBatchSizes): the config is kept, and a model that cannot batch is refused with the
  reason (exit code 3), so the user learns their setting contradicts the model.

Either way the one-line outcome goes to the termination log, where the operator reads it:
`ModelNotBatchable: <why>` becomes status.batching, `BatchingNotSupported: <why>` the reason
of Ready=False. The decision is `batchability.batch_problem`, the rule the server itself
applies, on the I/O ONNX Runtime reports for the file (a session with graph optimizations off).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from . import batchability
from .errors import BATCHING_NOT_SUPPORTED

MODEL_NOT_BATCHABLE = "ModelNotBatchable"  # batching turned off to follow the model
BATCHING_FITS = "BatchingFits"  # nothing to change
FIT_SKIPPED = "FitSkipped"  # the model could not be read here; the server will say why
EXIT_REFUSED = 3
AUTO, REQUIRED = "auto", "required"


@dataclasses.dataclass(frozen=True)
class Fit:
    """What the step decided: the config to write (None: keep the file), the one-line
    outcome `<Reason>: <why>`, and the exit code."""

    config: mc.ModelConfig | None
    line: str
    exit_code: int = 0


def fit(config: mc.ModelConfig, tensors: Sequence[batchability.Tensor], *, mode: str) -> Fit:
    """Pure: the decision for `config` and the model's tensors under `mode` (auto|required)."""
    mbs = config.max_batch_size
    served = {o.name for o in config.output}
    relevant = [t for t in tensors if t.kind == "input" or not served or t.name in served]
    problem = batchability.batch_problem(relevant)
    if problem is None:
        return Fit(None, f"{BATCHING_FITS}: max_batch_size {mbs}" + (
            ": every input and output has a variable first dimension" if mbs > 0 else " as configured"))
    if mbs <= 0:
        return Fit(None, f"{MODEL_NOT_BATCHABLE}: {problem}; requests run one at a time")
    if mode == REQUIRED:
        return Fit(None, f"{BATCHING_NOT_SUPPORTED}: spec.batching asks the server to batch up to {mbs} requests, "
                         f"but the model cannot batch: {problem}. Set spec.batching.enabled: false, or leave "
                         "spec.batching's sizes unset so batching follows the model", EXIT_REFUSED)
    fitted = mc.ModelConfig()
    fitted.CopyFrom(config)
    fitted.max_batch_size = 0
    fitted.ClearField("dynamic_batching")
    return Fit(fitted, f"{MODEL_NOT_BATCHABLE}: {problem}; max_batch_size {mbs} -> 0, requests run one at a time")


def model_tensors(path: Path) -> list[batchability.Tensor]:
    """The model's inputs and outputs as ONNX Runtime reports them (the server's view)."""
    import onnxruntime as ort  # heavy; imported on use

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [batchability.Tensor(t.name, "input", batchability.dims_of(t.shape)) for t in session.get_inputs()] + [
        batchability.Tensor(t.name, "output", batchability.dims_of(t.shape)) for t in session.get_outputs()]


def run(config_path: Path, model_path: Path, mode: str) -> Fit:
    """Read, decide, and rewrite config.pbtxt when the decision changes it."""
    config = mc.ModelConfig()
    text_format.Parse(config_path.read_text(), config)
    try:
        tensors = model_tensors(model_path)
    except Exception as exc:  # noqa: BLE001 - the server loads the same file and names the error
        return Fit(None, f"{FIT_SKIPPED}: cannot read {model_path}: {' '.join(str(exc).split())[:500]}")
    decided = fit(config, tensors, mode=mode)
    if decided.config is not None:
        partial = config_path.with_name(config_path.name + ".partial")
        partial.write_text(text_format.MessageToString(decided.config))
        partial.replace(config_path)
    return decided


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelship_server.fit_config",
        description="Fit config.pbtxt's batching to the model: turn it off for a model that cannot batch "
                    "(auto), or refuse the config (required).",
    )
    parser.add_argument("--config", required=True, type=Path, help="the config.pbtxt to fit (rewritten in place)")
    parser.add_argument("--model", required=True, type=Path, help="the model file the server will load")
    parser.add_argument("--batching", choices=[AUTO, REQUIRED], default=AUTO,
                        help="auto: batching follows the model; required: a model that cannot batch is refused")
    parser.add_argument("--termination-log", default="/dev/termination-log", type=Path,
                        help="file the one-line outcome is written to for the operator")
    args = parser.parse_args(argv)
    decided = run(args.config, args.model, args.batching)
    print(decided.line, file=sys.stderr if decided.exit_code else sys.stdout)
    try:
        args.termination_log.write_text(decided.line + "\n")
    except OSError:
        pass  # outside a pod there may be no termination log; the line is printed above
    return decided.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
