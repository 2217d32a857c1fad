"""What switching between ONNX Runtime sessions costs the first calls after the switch, with the
pool threads' spinning on (ONNX Runtime's default), off (modelship-server's default, and so how
`modelship optimize` times), and on within a run only (`session.force_spinning_stop`).

    .venv/bin/python benchmarks/switch_cost.py            # MiniLM from the optimize benchmark's cache

The search times its variants interleaved: a few calls of one, then of the next. With spinning
on, the pool threads of the session that just ran keep busy-waiting for work that never comes,
on the cores the next session needs. This prints, per variant and setting, the median latency
of each of the first calls after a switch and of the steady calls after them.
(Results: docs/optimize-benchmarks.md, "Search time".)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "server_image"))
sys.path.insert(0, str(REPO / "benchmarks"))

VARIANTS = ("baseline", "ort-all", "transformer-fusion", "fusion+dynamic-int8-per-channel-float-10pct",
            "fusion+dynamic-int8-per-channel-float-25pct", "ort-all-1-thread")


SETTINGS = ("on", "off", "run-only")


def _session(cand, recipe, path: Path, setting: str):  # noqa: ANN001, ANN202 - modules imported in main
    import onnxruntime as ort

    from modelship_server.runtime import set_spinning

    options = ort.SessionOptions()  # cand.session_options(recipe) with the spinning under test
    options.graph_optimization_level = cand.session_options(recipe).graph_optimization_level
    options.intra_op_num_threads = recipe.intra_op_threads
    set_spinning(options, setting != "off")
    if setting == "run-only":
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=recipe.providers)


def measure(settings: dict[str, dict], feed: dict, rounds: int, calls: int) -> dict[str, dict[str, np.ndarray]]:
    """Per setting and variant, a rounds x calls array of milliseconds. Each round runs every
    variant in turn under each setting (rotating which goes first), so load that drifts during
    the run falls on every setting alike."""
    for sessions in settings.values():
        for session in sessions.values():
            for _ in range(3):
                session.run(None, feed)
    out: dict[str, dict[str, list[list[float]]]] = {s: {n: [] for n in sessions} for s, sessions in settings.items()}
    order = list(settings)
    for r in range(rounds):
        for setting in order[r % len(order):] + order[:r % len(order)]:
            for name, session in settings[setting].items():
                durations = []
                for _ in range(calls):
                    start = time.perf_counter()
                    session.run(None, feed)
                    durations.append((time.perf_counter() - start) * 1000.0)
                out[setting][name].append(durations)
    return {s: {n: np.asarray(v) for n, v in by_name.items()} for s, by_name in out.items()}


def main() -> int:
    from modelship_server.optimize import candidates as cand
    from modelship_server.optimize.builds import quiet_quantizer
    from optimize_models import prepare

    quiet_quantizer()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/modelship-bench"),
                        help="the optimize benchmark's cache (the model is fetched and written there if missing)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--first", type=int, default=3, help="calls counted as 'after the switch' (default 3)")
    args = parser.parse_args()

    model, data, what = prepare("minilm", args.cache)
    arrays = np.load(data)
    feeds = [{k: arrays[k][i:i + 1] for k in arrays.files} for i in range(len(arrays[arrays.files[0]]))]
    recipes, _ = cand.default_recipes(gpu_unavailable="not used here", transformer=True)
    recipes = {r.name: r for r in [cand.baseline_recipe(), *recipes]}
    print(f"{what}; building {len(VARIANTS)} variants", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: cand.build(recipes[name], model, Path(tmp), feeds[:16]) for name in VARIANTS}
        print(f"{'variant':46s} {'spinning':9s} {'first calls (ms)':24s} {'steady (ms)':>11s}  first/steady")
        settings = {label: {name: _session(cand, recipes[name], files[name], label) for name in VARIANTS}
                    for label in SETTINGS}
        for label, by_name in measure(settings, feeds[16], args.rounds, args.calls).items():
            for name, ms in by_name.items():
                first = np.median(ms[:, :args.first], axis=0)
                steady = float(np.median(ms[:, args.first:]))
                print(f"{name:46s} {label:9s} {str(np.round(first, 1)):24s} {steady:11.2f}  "
                      f"{float(np.median(first)) / steady:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
