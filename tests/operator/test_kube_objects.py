"""kube/objects.py: the object helpers the reconciler, the autoscaler and render share."""

from __future__ import annotations

from modelship.kube import objects
from modelship.kube.kinds import object_path

MSVC = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
        "metadata": {"name": "resnet", "namespace": "ml", "uid": "u-1", "resourceVersion": "42"}}


def test_controlled_by_needs_a_controller_reference_to_that_uid() -> None:
    owned = {"metadata": {"ownerReferences": [objects.owner_reference("resnet", "u-1")]}}
    assert objects.controlled_by(owned, "u-1")
    assert not objects.controlled_by(owned, "u-2")  # an earlier ModelService of the same name
    merely_owned = {"metadata": {"ownerReferences": [{**objects.owner_reference("resnet", "u-1"), "controller": False}]}}
    assert not objects.controlled_by(merely_owned, "u-1")
    assert not objects.controlled_by({"metadata": {}}, "u-1")


def test_owner_reference_points_at_the_model_service() -> None:
    assert objects.owner_reference("resnet", "u-1") == {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService", "name": "resnet", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True}


def test_event_is_about_the_model_service_and_fits_the_api_limits() -> None:
    event = objects.event(MSVC, reason="ScaledUp", message="x" * 2000, now="2026-01-01T00:00:00Z",
                          component="modelship-autoscaler", reporting_component="modelship.dev/autoscaler",
                          reporting_instance="i" * 300)
    assert event["involvedObject"] == {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelService",
                                       "name": "resnet", "namespace": "ml", "uid": "u-1", "resourceVersion": "42"}
    assert event["metadata"] == {"generateName": "resnet.", "namespace": "ml"}
    assert event["type"] == "Normal" and event["reason"] == "ScaledUp"
    assert len(event["message"]) == 1024 and len(event["reportingInstance"]) == 128
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-01-01T00:00:00Z"
    warning = objects.event(MSVC, reason="Failed", message="m", now="t", component="c", reporting_component="r",
                            reporting_instance="i", warning=True)
    assert warning["type"] == "Warning"


def test_object_paths_of_core_named_group_and_custom_kinds() -> None:
    assert object_path("v1", "ConfigMap", "ml", "a") == "/api/v1/namespaces/ml/configmaps/a"
    assert object_path("apps/v1", "Deployment", "ml") == "/apis/apps/v1/namespaces/ml/deployments"
    assert object_path("modelship.dev/v1alpha1", "ModelService", "ml", "resnet") == \
        "/apis/modelship.dev/v1alpha1/namespaces/ml/modelservices/resnet"
