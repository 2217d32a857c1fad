"""The operator at run time: the stages an event passes through, one module each.

    handlers  (kopf, thin)  watch events ─► kube.cache (what exists) + queue (keys to look at)
    reconcile              key ─► render ─► apply what differs ─► observe ─► status, Events
    main                   wires them together and runs kopf

The API client and the cache live in `modelship.kube`, below this package and the autoscaler.
"""
