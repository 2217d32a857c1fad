"""The operator's calls to the API server, and nothing else: server-side apply with one field
manager, deletes, status patches, scale, Events and lists.

The Kubernetes client is synchronous; calls run in a thread pool so the event loop (kopf's
watches, the other workers) never waits on the network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from typing import Any, Mapping

from modelship import contracts
from modelship.kube import retry
from modelship.kube.kinds import object_path


class KubeError(Exception):
    """An API call failed; `status` is the HTTP status (0: no answer, the transport failed),
    the message is the API server's; `retry_after`: the seconds its Retry-After asked for."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return retry.transient(self.status)


class KubeClient:
    """Async writes on top of a configured `kubernetes.client.ApiClient`."""

    def __init__(self, api_client: Any, *, field_manager: str = contracts.FIELD_MANAGER, threads: int = 8,
                 timeout: float = 30) -> None:
        self._api = api_client
        self._timeout = timeout
        self._field_manager = field_manager
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube")
        self.calls: dict[str, int] = {}  # verb -> count, for the benchmark and the logs
        self.seconds: dict[str, float] = {}  # verb -> total wall seconds, queueing included

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def apply(self, obj: Mapping[str, Any], *, resource_version: str | None = None) -> dict[str, Any]:
        """Server-side apply `obj` as the operator's field manager, taking over conflicts
        (the operator is the owner of what it renders). With `resource_version`, the API server
        applies only over an object of that version (or creates one where there is none) and
        answers 409 otherwise."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        if resource_version is not None:
            obj = {**obj, "metadata": {**meta, "resourceVersion": resource_version}}
        return await self._call(
            "apply", "PATCH", path, body=obj,
            content_type="application/apply-patch+yaml",
            query={"fieldManager": self._field_manager, "force": "true"},
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete one object; False when it was already gone."""
        try:
            await self._call("delete", "DELETE", object_path(api_version, kind, namespace, name),
                             body={"propagationPolicy": "Background"}, content_type="application/json")
        except KubeError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch the ModelService's status subresource (the spec is never written)."""
        path = object_path(contracts.API_VERSION, contracts.KIND, namespace, name) + "/status"
        return await self._call(
            "patch_status", "PATCH", path, body={"status": status},
            content_type="application/merge-patch+json", query={"fieldManager": self._field_manager},
        )

    async def scale(self, api_version: str, kind: str, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """Set `replicas` through the object's scale subresource (a merge patch as the field
        manager, so a later server-side apply that leaves replicas out never takes it back)."""
        return await self._call(
            "scale", "PATCH", object_path(api_version, kind, namespace, name) + "/scale",
            body={"spec": {"replicas": replicas}}, content_type="application/merge-patch+json",
            query={"fieldManager": self._field_manager},
        )

    async def create_event(self, event: Mapping[str, Any]) -> None:
        path = object_path("v1", "Event", event["metadata"]["namespace"])
        await self._call("event", "POST", path, body=event, content_type="application/json")

    async def get(self, path: str) -> dict[str, Any]:
        return await self._call("get", "GET", path)

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST `body` to the collection `path` (the Lease of leader election)."""
        return await self._call("create", "POST", path, body=body, content_type="application/json")

    async def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT `body`; with metadata.resourceVersion set, a 409 says someone wrote first."""
        return await self._call("replace", "PUT", path, body=body, content_type="application/json")

    async def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        """All items of a collection path such as /apis/apps/v1/deployments (for the cache's priming)."""
        items: list[dict[str, Any]] = []
        token = None
        while True:
            query = {"limit": "500"}
            if label_selector:
                query["labelSelector"] = label_selector
            if token:
                query["continue"] = token
            page = await self._call("list", "GET", path, query=query)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    async def _call(self, verb: str, method: str, path: str, *, body: Any = None,
                    content_type: str | None = None, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        self.calls[verb] = self.calls.get(verb, 0) + 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return await loop.run_in_executor(self._pool, self._request, method, path, body, content_type, query)
        finally:
            self.seconds[verb] = self.seconds.get(verb, 0.0) + loop.time() - started

    def summary(self) -> str:
        """'verb: count calls, mean ms' for the logs."""
        return ", ".join(
            f"{verb}: {count} calls, {1000 * self.seconds.get(verb, 0.0) / count:.0f} ms mean"
            for verb, count in sorted(self.calls.items())
        )

    def _request(self, method: str, path: str, body: Any, content_type: str | None,
                 query: Mapping[str, str] | None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        _, url, headers, _, _ = self._api.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()),
            header_params=headers, auth_settings=["BearerToken"],
        )
        # the client serializes dict bodies as JSON for JSON and YAML (apply) content types
        payload = body
        from kubernetes.client.exceptions import ApiException

        try:
            response = self._api.call_api(method, url, header_params=headers, body=payload, _request_timeout=self._timeout)
            response.read()
        except ApiException as error:
            raise KubeError(error.status or 0, _message(error.body) or str(error.reason),
                            retry_after=retry.retry_after(error.headers)) from None
        except retry.transport_errors() as error:  # refused, reset, timed out: weather, not a bug
            raise KubeError(0, retry.describe_transport(error)) from None
        data = response.data.decode("utf-8") if isinstance(response.data, bytes) else response.data
        if response.status >= 400:
            raise KubeError(response.status, _message(data) or f"HTTP {response.status}",
                            retry_after=retry.retry_after(dict(response.headers or {})))
        return json.loads(data) if data else {}


def _message(body: Any) -> str:
    """The `message` of a Kubernetes Status body, else the body itself."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        return str(json.loads(body).get("message") or body)
    except (TypeError, ValueError, AttributeError):
        return str(body or "")
