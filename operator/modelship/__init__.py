"""modelship: a Kubernetes operator that takes an ML model to an optimized, autoscaled service."""

__version__ = "0.1.0"
