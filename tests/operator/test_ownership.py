"""The ownership guard's decision (status/ownership.py): which live objects the operator may apply
over, and what status says of the rest. Pure; on the real API server in test_child_ownership_cluster.py."""

from __future__ import annotations

from typing import Any

from modelship.render import names
from modelship.status import conditions as c
from modelship.status.ownership import CHILD_NAME_CONFLICT, NONE_YET, Conflict, claim, conditions_of, precondition

UID = "11111111-2222-3333-4444-555555555555"


def live(*, refs: list[dict[str, Any]] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "foo", "ownerReferences": refs or [], "labels": labels or {}}}


def ref(kind: str, name: str, uid: str, *, controller: bool = True) -> dict[str, Any]:
    return {"apiVersion": "x/v1", "kind": kind, "name": name, "uid": uid, "controller": controller}


def decide(obj: dict[str, Any] | None, name: str = "foo") -> Conflict | None:
    return claim(obj, kind="Deployment", name=name, uid=UID, msvc_name="foo")


def test_missing_or_controlled_by_this_modelservice_is_ours() -> None:
    assert decide(None) is None
    assert decide(live(refs=[ref("ModelService", "foo", UID)])) is None


def test_the_apply_must_find_what_the_read_found() -> None:
    assert precondition(None) == NONE_YET  # no object: created only if there is still none
    found = live(refs=[ref("ModelService", "foo", UID)])
    found["metadata"]["resourceVersion"] = "48213"
    assert precondition(found) == "48213"


def test_an_orphan_with_this_modelservices_labels_is_adopted_one_with_anothers_is_not() -> None:
    assert decide(live(labels={**names.MANAGED_BY, names.SERVICE_LABEL: "foo"})) is None
    assert decide(live(labels={**names.MANAGED_BY, names.OPTIMIZE_LABEL: "foo"})) is None
    other = decide(live(labels={**names.MANAGED_BY, names.SERVICE_LABEL: "bar"}))
    assert other is not None and "no owner" in other.owner
    unmanaged = decide(live(labels={names.SERVICE_LABEL: "foo"}))  # a user's copy of our selector label
    assert unmanaged is not None


def test_someone_elses_object_is_a_conflict_naming_kind_name_and_owner() -> None:
    conflict = decide(live(refs=[ref("ModelService", "foo-canary", "other-uid")]), name="foo-canary")
    assert conflict == Conflict("Deployment", "foo-canary", "controlled by ModelService foo-canary (uid other-uid)")
    assert conflict.message.startswith("Deployment foo-canary exists and is not owned by this ModelService "
                                       "(controlled by ModelService foo-canary (uid other-uid))")
    assert "earlier ModelService of this name" in decide(live(refs=[ref("ModelService", "foo", "old-uid")])).owner
    plain = decide(live())
    assert plain is not None and plain.owner == "it has no owner: made by someone else, not by modelship"
    shared = decide(live(refs=[ref("Application", "argo", "u", controller=False)]))
    assert shared is not None and shared.owner == "owned by Application argo, not as controller"


def test_a_modelservice_without_a_uid_owns_nothing_it_did_not_create() -> None:
    assert claim(live(refs=[ref("ModelService", "foo", UID)]), kind="Service", name="foo", uid=None,
                 msvc_name="foo") is not None


def test_conditions_degraded_always_ready_false_only_when_what_serves_is_taken() -> None:
    assert conditions_of([], msvc_name="foo") == []
    route = Conflict("HTTPRoute", "foo", "it has no owner: made by someone else, not by modelship")
    only_route = conditions_of([route], msvc_name="foo")
    assert [(x.type, x.status, x.reason) for x in only_route] == [(c.DEGRADED, c.TRUE, CHILD_NAME_CONFLICT)]
    service = Conflict("Service", "foo", "controlled by ModelService bar (uid u)")
    both = conditions_of([service, route], msvc_name="foo")
    assert [(x.type, x.status) for x in both] == [(c.DEGRADED, c.TRUE), (c.READY, c.FALSE)]
    assert both[0].message.index("HTTPRoute foo") < both[0].message.index("Service foo exists")  # sorted
    assert all(x.warning for x in both)
    canary_service = Conflict("Service", "foo-canary", "controlled by ModelService foo-canary (uid u)")
    assert [x.type for x in conditions_of([canary_service], msvc_name="foo")] == [c.DEGRADED]
