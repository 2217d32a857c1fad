"""The operator's Kubernetes layer: the client, the cache, object helpers, retries and leader election."""
