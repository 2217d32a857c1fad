"""The operator at run time: the stages an event passes through, one module each.

    handlers  (kopf, thin)  watch events ─► store (cache of what exists) + queue (keys to look at)
    reconcile              key ─► render ─► apply what differs ─► observe ─► status, Events
    kube                   the only module that talks to the API server (apply, delete, status, events)
    main                   wires them together and runs kopf
"""
