"""The builtin autoscaler: signals from the serving pods (or Prometheus), a pure decision,
and the loop that acts on it through the Deployment's scale subresource."""
