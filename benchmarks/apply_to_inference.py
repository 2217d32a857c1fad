"""Time from `kubectl apply` of a ModelService to Ready and to the first successful inference.

On the local cluster (warm: binaries built, the operator already running on the node agent),
each run applies a fresh ModelService for a generated MLP and, from the moment of the apply,
polls the ModelService's Ready condition and tries an inference on the Service's ready
endpoints every 20 ms. Runs alternate between optimization off (fetch, then serve) and on (the
real optimize Job first, then fetch, rebuild the chosen variant and serve).

    .venv/bin/python benchmarks/apply_to_inference.py --runs 3 --json docs/benchmarks/apply-to-inference.json

It starts its own cluster in a temporary folder and stops it at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from modelship.demo_command import Demo, service_manifest  # noqa: E402


def first_success(demo: Demo, name: str, deadline: float) -> tuple[float | None, float | None]:
    """Seconds until Ready and until the first successful inference, measured from now."""
    import tritonclient.http as httpclient

    start = time.monotonic()
    ready_at = served_at = None
    x = np.zeros((1, 256), np.float32)
    path = f"/apis/modelship.dev/v1alpha1/namespaces/default/modelservices/{name}"
    while time.monotonic() < deadline and (ready_at is None or served_at is None):
        if ready_at is None:
            msvc = demo.plane.api("GET", path)
            if any(c["type"] == "Ready" and c["status"] == "True"
                   for c in (msvc.get("status") or {}).get("conditions") or []):
                ready_at = time.monotonic() - start
        if served_at is None:
            slices = demo.plane.api("GET", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
                                           f"?labelSelector=kubernetes.io/service-name={name}")
            for address in [a for s in slices.get("items", []) for e in s.get("endpoints") or []
                            if (e.get("conditions") or {}).get("ready") for a in e.get("addresses") or []]:
                client = httpclient.InferenceServerClient(f"{address}:8000", network_timeout=5)
                try:
                    request = httpclient.InferInput("INPUT0", [1, 256], "FP32")
                    request.set_data_from_numpy(x)
                    client.infer("mlp", [request])
                    served_at = time.monotonic() - start
                    break
                except Exception:  # noqa: BLE001 - not serving yet; try again
                    pass
                finally:
                    client.close()
        time.sleep(0.02)
    return ready_at, served_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per setting (default: 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run (default: 300)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="modelship-bench-") as tmp:
        demo = Demo(Path(tmp), timeout=args.timeout)
        try:
            demo.cluster(reuse=False)
            url, digest = demo.publish_model()
            demo.install()
            results: dict[str, list[dict[str, float | None]]] = {"optimization off": [], "optimization on": []}
            for run in range(args.runs):
                for setting, enabled in (("optimization off", False), ("optimization on", True)):
                    name = f"bench-{'on' if enabled else 'off'}-{run}"
                    manifest = service_manifest(url, digest)
                    manifest["metadata"]["name"] = name
                    manifest["spec"]["optimization"]["enabled"] = enabled
                    path = Path(tmp) / f"{name}.json"
                    path.write_text(json.dumps(manifest))
                    demo.kubectl("apply", "-f", str(path))
                    ready, served = first_success(demo, name, time.monotonic() + args.timeout)
                    results[setting].append({"ready_s": ready and round(ready, 3),
                                             "first_inference_s": served and round(served, 3)})
                    demo.say(f"{setting} run {run + 1}: Ready after {ready}s, first inference after {served}s")
                    demo.kubectl("delete", "msvc", name, "--wait=true", "--timeout=120s")
        finally:
            demo.plane.down(quiet=True)
    summary = {}
    for setting, rows in results.items():
        ready = [r["ready_s"] for r in rows if r["ready_s"] is not None]
        served = [r["first_inference_s"] for r in rows if r["first_inference_s"] is not None]
        summary[setting] = {"runs": rows,
                            "median_ready_s": round(statistics.median(ready), 2) if ready else None,
                            "median_first_inference_s": round(statistics.median(served), 2) if served else None}
        print(f"{setting:18} median Ready {summary[setting]['median_ready_s']} s, "
              f"first inference {summary[setting]['median_first_inference_s']} s ({len(rows)} runs)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
