"""Who may call the serving endpoints: API keys from a mounted Secret and Kubernetes
ServiceAccount tokens checked by TokenReview (and optionally SubjectAccessReview).

`decide` holds the pure decisions, `keys` the reloadable key set, `kube` the calls to
the API server, `gate` the one object both protocols ask (with its verdict cache).
"""

from .decide import Verdict
from .gate import Gate, GateConfig

__all__ = ["Gate", "GateConfig", "Verdict"]
