"""A real local Kubernetes control plane, built from Go modules, for trying and testing modelship.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as local processes on
loopback ports; kwok fakes the kubelets of a few CPU and GPU nodes. The pieces:

- `toolchain`: builds the pinned binaries from the wrapper modules in `hack/tools/` and caches them;
- `pki`: the certificates, keys and tokens one plane needs;
- `nodes`: the fake nodes (pure manifests);
- `plane`: starts, watches and stops the processes in a state directory;
- `command`: the `modelship dev-cluster` subcommand.
"""
