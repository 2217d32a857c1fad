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
    parser.add_argument(
        "--leader-election-namespace", default=None, metavar="NS",
        help="hold a Lease in this namespace and write only while holding it, so several replicas "
             "run safely (default: $POD_NAMESPACE, else the in-cluster ServiceAccount's namespace; "
             "outside a cluster with neither: no election, one replica)",
    )
    parser.add_argument("--no-leader-election", action="store_true",
                        help="never elect: this process writes (one replica only)")
    parser.add_argument("--lease-name", default="modelship-operator", metavar="NAME",
                        help="the Lease's name (default: modelship-operator)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def election_namespace(args: argparse.Namespace, environ: dict[str, str], sa_file: str = SERVICE_ACCOUNT_NAMESPACE
                       ) -> str | None:
    """Where the Lease lives, or None for no election (see --leader-election-namespace)."""
    if args.no_leader_election:
        return None
    if args.leader_election_namespace:
        return str(args.leader_election_namespace)
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        with open(sa_file, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def run(args: argparse.Namespace) -> int:
    import os

    from modelship.controller.main import Election, run_operator

    namespace = election_namespace(args, dict(os.environ))
    liveness = None if args.liveness == "off" else args.liveness
    listen = os.environ.get("MODELSHIP_LISTEN_ADDRESS")
    if liveness and listen:  # the local node agent's pods share one host: each on its own address
        liveness = liveness.replace("//0.0.0.0:", f"//{listen}:")
    return run_operator(
        election=Election(namespace=namespace, name=args.lease_name) if namespace else None,
        namespaces=args.namespace,
        workers=args.workers,
        liveness=liveness,
        resync_seconds=args.resync_seconds,
        verbose=args.verbose,
        metrics_port=args.metrics_port,
        prometheus_url=args.prometheus_url,
    )
