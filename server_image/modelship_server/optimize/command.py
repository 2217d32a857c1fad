"""`modelship optimize`: the command line around the search.

Everything a user can get wrong (missing file, corrupt model, wrong digest, a dataset that does
not fit) ends in one line naming the problem and what to do, and exit code 2: in a Kubernetes
Job that line becomes the termination message, so it must be readable without a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_DIGEST_MISMATCH = 3  # --apply-recipe rebuilt a different file (see apply.py)
MIN_CAPACITY_SECONDS = 15.0  # below this a sweep measures server start-up, not capacity


def split_budget(budget_seconds: float, capacity_seconds: float) -> float:
    """Seconds the search may use so the capacity sweep still gets its share: its own
    --capacity-seconds, but at most a quarter of the budget and at least the minimum."""
    if capacity_seconds <= 0:
        return budget_seconds
    reserve = max(min(MIN_CAPACITY_SECONDS, capacity_seconds), min(capacity_seconds, budget_seconds / 4))
    return max(0.0, budget_seconds - reserve)


def capacity_seconds_left(budget_seconds: float, elapsed: float, capacity_seconds: float) -> float:
    """What the capacity sweep gets: what is left of the budget, capped by --capacity-seconds,
    never below the minimum (a run over budget still reports a capacity, briefly measured)."""
    return max(min(MIN_CAPACITY_SECONDS, capacity_seconds), min(capacity_seconds, budget_seconds - elapsed))


DESCRIPTION = """\
Make an ONNX model faster without making it wrong. Builds candidate variants (ONNX Runtime graph
optimization, transformer fusion, dynamic and static int8, fp16 on a GPU, session settings),
rejects those whose outputs drift past the accuracy gate, times the rest interleaved against the
original, keeps the fastest that beats it beyond the measured noise (else the original), and
measures how many requests per second one modelship-server replica then sustains within the SLO.

  modelship optimize --model model.onnx --output out/ --slo-ms 50
      writes out/model.onnx (the chosen variant) and out/report.json, prints a table
  modelship optimize --model model.onnx --output out/ --dataset val.npz --metric top1_agreement

Exit codes: 0 done; 2 bad input (the one-line message says what to fix); 3 --apply-recipe rebuilt
a file whose sha256 differs from --expect-sha256.
"""


class UsageError(Exception):
    """Bad input from the user; the message is the whole story."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="the ONNX model file to optimize")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder for model.onnx (the chosen variant) and report.json")
    parser.add_argument("--sha256", help="expected sha256 of --model (hex); refuse the model if it differs")
    parser.add_argument("--dataset", type=Path,
                        help=".npz with one array per model input: batch-first (samples on the batch axis) or "
                             "stacked complete feeds (one axis more than the input); used for calibration, the "
                             "accuracy gate and the capacity sweep (default: inputs generated from --inputs and "
                             "the model's shapes)")
    parser.add_argument("--inputs", metavar="JSON", default=None,
                        help="declared inputs, the JSON form of a ModelService's spec.model.inputs: "
                             '[{"name": "x", "shape": [1, 3, 48, 160]}, {"name": "sr", "value": 16000}, '
                             '{"name": "ids", "range": [0, 30522]}]; shape is one request\'s whole shape, '
                             "batch axis included. Generated inputs follow it; without it (and without "
                             "--dataset) a model with a dynamic non-batch dim or a scalar input is refused")
    parser.add_argument("--metric", default="cosine", choices=["cosine", "top1_agreement", "max_abs", "max_rel"],
                        help="accuracy metric of the gate (default: cosine)")
    parser.add_argument("--threshold-mean", type=float, default=None,
                        help="bound on the metric's mean over inputs (default: 0.99 for similarity metrics, "
                             "1e-2 for error metrics)")
    parser.add_argument("--threshold-min", type=float, default=None,
                        help="bound on the worst input: minimum for similarity metrics, maximum for error "
                             "metrics (default: 0.98, or 5e-2 for error metrics)")
    parser.add_argument("--budget-seconds", type=float, default=600.0,
                        help="time for the whole run: candidates, timing (scaled down when short) and the "
                             "capacity sweep, which gets what is left but at least "
                             f"{MIN_CAPACITY_SECONDS:g}s (default: 600)")
    parser.add_argument("--samples", type=int, default=32,
                        help="generated inputs when no --dataset is given (default: 32)")
    parser.add_argument("--timing-rounds", type=int, default=7, help="interleaved timing rounds (default: 7)")
    parser.add_argument("--timing-calls", type=int, default=10, help="calls per variant per round (default: 10)")
    parser.add_argument("--build-workers", type=int, default=None, metavar="N",
                        help="candidates built at once, each in its own process (default: one per usable CPU, "
                             "as many as memory holds, at most 4; 1 builds in this process)")
    parser.add_argument("--seed", type=int, default=0, help="seed of generated inputs (default: 0)")
    parser.add_argument("--termination-log", type=Path,
                        help="write the compact JSON summary (<= 4 KiB) here, e.g. /dev/termination-log")
    cap = parser.add_argument_group("capacity model (the chosen variant on a real modelship-server)")
    cap.add_argument("--slo-ms", type=float, default=None,
                     help="latency objective per request; capacity is the highest rate within it "
                          "(default: none, report the throughput knee)")
    cap.add_argument("--slo-percentile", choices=["p50", "p90", "p95", "p99"], default="p95",
                     help="which latency percentile the SLO bounds (default: p95)")
    cap.add_argument("--max-batch-size", type=int, default=32,
                     help="largest dynamic batch to try (default: 32)")
    cap.add_argument("--capacity-seconds", type=float, default=60.0,
                     help="time for the capacity sweep; 0 skips it (default: 60)")
    rebuild = parser.add_argument_group("re-apply a chosen variant (what a serving pod's init step runs)")
    rebuild.add_argument("--apply-recipe", metavar="JSON",
                         help="build only this recipe from --model into --output/model.onnx; with --expect-sha256")
    rebuild.add_argument("--expect-sha256", metavar="HEX",
                         help="sha256 the rebuilt file must have (from the report); exit 3 if it differs")


def _check_model(path: Path, expected_sha256: str | None):  # noqa: ANN202 - onnx.ModelProto
    import onnx
    import onnxruntime as ort

    from .search import sha256_file

    if not path.is_file():
        raise UsageError(f"model file {path} does not exist; pass --model with the path of an .onnx file")
    if expected_sha256 is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256):
            raise UsageError(f"--sha256 {expected_sha256!r} is not 64 hex digits")
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise UsageError(f"model file {path} has sha256 {actual}, expected {expected_sha256.lower()}; "
                             "the file is not the one you meant (re-download it or fix --sha256)")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - whatever onnx or ORT raise, the model is not loadable
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"model file {path} is not a loadable ONNX model ({detail}); "
                         "check that it is a complete .onnx export") from None
    return model


def run(args: argparse.Namespace) -> int:
    from .apply import DigestMismatch

    try:
        return _apply(args) if args.apply_recipe is not None else _run(args)
    except (UsageError, DigestMismatch) as exc:
        print(f"modelship optimize: error: {exc}", file=sys.stderr)
        if args.termination_log:
            _write(args.termination_log, f"error: {exc}"[:4096])
        return EXIT_DIGEST_MISMATCH if isinstance(exc, DigestMismatch) else EXIT_BAD_INPUT


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        print(f"modelship optimize: cannot write termination log {path}: {exc}", file=sys.stderr)


def _feeds(args: argparse.Namespace, model, *, strict: bool = True) -> tuple[list, list, str]:  # noqa: ANN001
    """Calibration and validation inputs, the same way for a search and for a re-apply.

    `strict`: refuse to generate inputs that would be meaningless (feeds.require_generatable);
    a re-apply is not strict, it regenerates exactly what the search used."""
    from modelship_server.feeds import InputsError, check_hints, parse_hints, require_generatable

    from .inputs import DatasetError, generate, input_specs, load_dataset

    specs = input_specs(model)
    try:
        hints = parse_hints(args.inputs, where="--inputs")
        check_hints(specs, hints)
        if args.dataset is not None:
            feeds = load_dataset(args.dataset, specs)
            source = f"dataset {args.dataset}"
        else:
            if strict:
                require_generatable(specs, hints)
            feeds = generate(specs, max(args.samples, 1), seed=args.seed, hints=hints)
            declared = ", declared shapes" if hints else ""
            source = f"generated ({len(feeds)} inputs, seed {args.seed}{declared})"
    except (DatasetError, InputsError) as exc:
        raise UsageError(str(exc)) from None
    # Calibrate and validate on disjoint halves when there is enough data, so the gate is not
    # judged on the very inputs the quantizer's ranges were fitted to.
    half = len(feeds) // 2
    calibration, validation = (feeds[:half], feeds[half:]) if half >= 2 else (feeds, feeds)
    return calibration, validation, source


def _tensorrt_profile(args: argparse.Namespace, model):  # noqa: ANN001, ANN202
    """The TensorRT optimization profile from --inputs and the batch range 1..--max-batch-size."""
    from modelship_server.feeds import parse_hints

    from .gpu_candidates import tensorrt_profile
    from .inputs import input_specs

    return tensorrt_profile(input_specs(model), parse_hints(args.inputs, where="--inputs"), args.max_batch_size)


def _apply(args: argparse.Namespace) -> int:
    from .apply import apply, parse_recipe
    from .builds import quiet_quantizer

    if not args.expect_sha256 or not re.fullmatch(r"[0-9a-fA-F]{64}", args.expect_sha256):
        raise UsageError(f"--apply-recipe needs --expect-sha256 with 64 hex digits; got {args.expect_sha256!r}")
    try:
        recipe = parse_recipe(args.apply_recipe)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    quiet_quantizer()
    model = _check_model(args.model, args.sha256)
    calibration, _, _ = _feeds(args, model, strict=False)
    digest = apply(args.model, args.output, recipe, args.expect_sha256, calibration)
    print(f"modelship optimize: rebuilt variant {recipe.name} into {args.output / 'model.onnx'} (sha256 {digest})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .apply import args_for
    from .builds import quiet_quantizer
    from .capacity import measure
    from .gate import HIGHER_IS_BETTER, GateSpec
    from .report import render_table, summary
    from .search import BaselineFailed, optimize

    import time

    started = time.monotonic()
    quiet_quantizer()
    if args.slo_ms is not None and args.slo_ms <= 0:
        raise UsageError(f"--slo-ms must be a positive number of milliseconds; got {args.slo_ms:g}")
    if args.build_workers is not None and args.build_workers < 1:
        raise UsageError(f"--build-workers must be at least 1; got {args.build_workers}")
    if args.max_batch_size < 1:
        raise UsageError(f"--max-batch-size must be at least 1; got {args.max_batch_size}")
    model = _check_model(args.model, args.sha256)
    higher = HIGHER_IS_BETTER[args.metric]
    gate = GateSpec(metric=args.metric,
                    threshold_mean=args.threshold_mean if args.threshold_mean is not None else (0.99 if higher else 1e-2),
                    threshold_worst=args.threshold_min if args.threshold_min is not None else (0.98 if higher else 5e-2))
    calibration, validation, source = _feeds(args, model)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create output folder {args.output}: {exc}") from None
    write_reference(args.output, calibration + validation, source)
    search_budget = split_budget(args.budget_seconds, args.capacity_seconds) - (time.monotonic() - started)
    try:
        report = optimize(args.model, args.output, calibration, validation, gate, input_source=source,
                          budget_seconds=search_budget, rounds=args.timing_rounds, calls=args.timing_calls,
                          workers=args.build_workers, tensorrt_profile=_tensorrt_profile(args, model))
    except BaselineFailed as exc:
        fix = "fix the dataset" if args.dataset is not None else "declare the inputs' shapes and values (--inputs)"
        raise UsageError(f"{exc}; {fix}") from None
    if report.outcome == "optimized":
        report.apply_args = args_for(report.chosen_recipe, report.output_sha256, args.samples, args.seed,
                                     args.dataset, args.inputs)
    if args.capacity_seconds > 0:
        # One request of the sweep: a sample the gate judged on, so the capacity is measured on
        # the dataset's or the declared shapes, never on 1-sized stand-ins.
        report.capacity = measure(args.output / "model.onnx", report.chosen_recipe, feed=validation[0],
                                  slo_ms=args.slo_ms,
                                  percentile=args.slo_percentile, max_batch_size=args.max_batch_size,
                                  budget_seconds=capacity_seconds_left(args.budget_seconds,
                                                                       time.monotonic() - started,
                                                                       args.capacity_seconds))
    (args.output / "report.json").write_text(report.model_dump_json(indent=2))
    print(render_table(report))
    if args.termination_log:
        _write(args.termination_log, summary(report))
    return 0


def write_reference(output: Path, feeds: list, source: str) -> None:
    """reference-profile.json: the drift reference (docs/monitoring.md) of the inputs judged on."""
    import json

    from modelship_server.monitoring.reference import build_reference

    unique = list({id(f): f for f in feeds}.values())  # without a split the halves are the same feeds
    try:
        doc = build_reference(unique, source=f"optimize: {source}")
        (output / "reference-profile.json").write_text(json.dumps(doc))
    except (OSError, ValueError, TypeError) as exc:  # monitoring's reference must never fail the optimization
        print(f"modelship optimize: warning: no reference-profile.json: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (python -m modelship_server.optimize.command)."""
    parser = argparse.ArgumentParser(prog="modelship optimize", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
