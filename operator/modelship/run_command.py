"""`modelship run`: start the operator against the cluster of KUBECONFIG, or in-cluster.

Heavy imports (kopf, the Kubernetes client) happen in `run`, so `modelship --help` and
`modelship render` stay fast.
"""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace", action="append", default=[], metavar="NS",
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--workers", type=int, default=32,
        help="ModelServices reconciled concurrently (default: 32)",
    )
    parser.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", metavar="URL",
        help="where kopf serves the liveness probe (default: http://0.0.0.0:8081/healthz; 'off' disables)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=8080, metavar="PORT",
        help="serve the operator's Prometheus metrics on this port at /metrics (default: 8080; 0 disables)",
    )
    parser.add_argument(
        "--prometheus-url", default=None, metavar="URL",
        help="read serving pods' metrics from this Prometheus for the builtin autoscaler "
             "(default: scrape each pod; spec.autoscaling.prometheus.url wins)",
    )
    parser.add_argument(
        "--resync-seconds", type=float, default=300.0,
        help="re-derive every ModelService's status this often even without events (default: 300)",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    from modelship.controller.main import run_operator

    return run_operator(
        namespaces=args.namespace,
        workers=args.workers,
        liveness=None if args.liveness == "off" else args.liveness,
        resync_seconds=args.resync_seconds,
        verbose=args.verbose,
        metrics_port=args.metrics_port,
        prometheus_url=args.prometheus_url,
    )
