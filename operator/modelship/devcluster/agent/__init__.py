"""The local node agent: a small kubelet for the dev cluster that runs modelship's own pods.

kwok fakes every pod it is given; this agent owns a few nodes of its own (`local-0`, `local-1`)
and runs the pods scheduled there for real, as local processes, so the optimize Job optimizes
and the server serves. Only modelship's images can run (they map to this installation's
commands); any other image gets the ErrImagePull-like status a kubelet would show.

Layout: pure decisions (`images`, `envvars`, `backoff`, `podstatus`, `probes`' thresholds) and
thin I/O around them (`kube` talks to the API server, `volumes` writes files, `launch` runs
inside the container's mount namespace, `process` starts and stops it, `podworker` drives one
pod, `node` registers and heartbeats, `agent` watches and dispatches).
"""
