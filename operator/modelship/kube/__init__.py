"""Talking to the API server and remembering what it said: below the controller, the
autoscaler, status, render and api, above only the contracts (docs/architecture.md).

    client   the only module that calls the API server (apply, delete, status, scale, events, list)
    cache    what exists, fed by watch events; read by the reconciler and the autoscaler
    kinds    (apiVersion, kind) -> plural, and the URL path of an object
    objects  pure helpers on object bodies: controlled-by, owner references, Event bodies
    retry    which failures are transient, and how long to wait before the next attempt
    relist   ModelServices deleted while the watch was away leave the cache
    leader   leader election on a coordination.k8s.io Lease: one writer at a time

The controller and the autoscaler both use these; neither reaches into the other for them.
"""
