"""`python -m modelship_server.monitoring reference --dataset X.npz --model M.onnx --output F`:
write the drift reference profile of a dataset (the same file `modelship optimize` writes as
reference-profile.json), for `modelship-server --monitoring-reference F`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m modelship_server.monitoring", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="build a reference profile from a dataset (.npz, one array per input)")
    ref.add_argument("--dataset", required=True, type=Path, help=".npz with one array per model input (as optimize reads)")
    ref.add_argument("--model", required=True, type=Path, help="the ONNX model the dataset feeds")
    ref.add_argument("--output", required=True, type=Path, help="where to write the reference JSON")
    ref.add_argument("--name", default="", help="the served model's name (default: any model that fits)")
    args = p.parse_args(argv)
    import onnx

    from ..optimize.inputs import DatasetError, input_specs, load_dataset
    from .reference import build_reference

    try:
        model = onnx.load(str(args.model), load_external_data=False)
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        print(f"error: --model {args.model}: not a readable ONNX model: {exc}", file=sys.stderr)
        return 2
    try:
        feeds = load_dataset(args.dataset, input_specs(model))
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    doc = build_reference(feeds, model=args.name, source=f"dataset {args.dataset.name} ({len(feeds)} samples)")
    args.output.write_text(json.dumps(doc))
    print(f"wrote {args.output}: {len(doc['features'])} features from {len(feeds)} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
