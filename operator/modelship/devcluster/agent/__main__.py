"""`python -m modelship.devcluster.agent`: the local node agent, as `dev-cluster up` starts it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from modelship.devcluster.agent.backoff import DEFAULT_CAP, DEFAULT_INITIAL, BackoffPolicy
from modelship.devcluster.agent.node import DEFAULT_NODE_NAMES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelship.devcluster.agent",
        description="Run the pods bound to this agent's nodes as local processes (modelship's images only).")
    parser.add_argument("--kubeconfig", type=Path, required=True, help="kubeconfig of the identity to act as")
    parser.add_argument("--state-dir", type=Path, required=True, help="folder for pod volumes, logs and records")
    parser.add_argument("--nodes", default=",".join(DEFAULT_NODE_NAMES), help="comma-separated node names")
    parser.add_argument("--backoff-initial", type=float, default=DEFAULT_INITIAL,
                        help=f"first CrashLoopBackOff delay in seconds (default {DEFAULT_INITIAL:g})")
    parser.add_argument("--backoff-cap", type=float, default=DEFAULT_CAP,
                        help=f"longest CrashLoopBackOff delay in seconds (default {DEFAULT_CAP:g})")
    args = parser.parse_args(argv)
    if args.backoff_initial <= 0 or args.backoff_cap < args.backoff_initial:
        parser.error(f"--backoff-initial must be > 0 and <= --backoff-cap; got {args.backoff_initial:g} "
                     f"and {args.backoff_cap:g}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")

    from modelship.devcluster.agent.agent import Agent
    from modelship.devcluster.agent.kube import Kube

    agent = Agent(Kube.from_kubeconfig(args.kubeconfig), args.state_dir,
                  tuple(n for n in args.nodes.split(",") if n),
                  BackoffPolicy(initial=args.backoff_initial, cap=args.backoff_cap))
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
