"""Progressive delivery (spec.rollout.strategy Canary): a second Deployment runs the new spec behind
the same Service at each step's share of the replicas, an analysis compares its metrics with
stable's over the same window, and a state machine promotes or rolls back.

`analysis` and `machine` are pure (table-tested); `observe` is the one place that scrapes pods;
the reconciler (controller/reconcile.py) applies what the machine decides and writes status.
"""
