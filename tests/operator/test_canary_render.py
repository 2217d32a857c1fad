"""The canary's children: what stable would run after promotion, on its own track and ConfigMap."""

from __future__ import annotations

from modelship.api.v1alpha1 import ModelService
from modelship.render import desired_hash, names, render_canary, render_children, template_revision
from msvc_samples import SHA, body

SPEC = {"model": {"uri": "https://h.example/m.onnx", "sha256": SHA}, "replicas": 2,
        "rollout": {"strategy": "Canary", "canary": {"steps": [{"weight": 33, "pauseSeconds": 5}]}}}


def test_the_canary_runs_stables_pods_on_its_own_track_selector_and_config() -> None:
    msvc = ModelService.from_body(body("svc", spec=SPEC))
    rendered = render_children(msvc)
    stable = {o["kind"]: o for o in rendered.objects}
    config_map, deployment = render_canary(msvc, rendered, replicas=1)
    assert (config_map["metadata"]["name"], deployment["metadata"]["name"]) == ("svc-canary-model-config", "svc-canary")
    assert config_map["data"] == stable["ConfigMap"]["data"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["selector"]["matchLabels"] == {names.SERVICE_LABEL: "svc", names.TRACK_LABEL: "canary"}
    labels = spec["template"]["metadata"]["labels"]
    assert labels[names.TRACK_LABEL] == "canary" and labels[names.SERVICE_LABEL] == "svc"  # behind the one Service
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["model-config"]["configMap"]["name"] == "svc-canary-model-config"
    # apart from the track and the ConfigMap, the pods are stable's, and carry its revision
    template = stable["Deployment"]["spec"]["template"]
    assert spec["template"]["spec"]["containers"] == template["spec"]["containers"]
    assert spec["template"]["spec"]["initContainers"] == template["spec"]["initContainers"]
    assert template_revision(deployment) == template_revision(stable["Deployment"])
    for obj in (config_map, deployment):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
        assert obj["metadata"]["annotations"][names.DESIRED_HASH_ANNOTATION] == desired_hash(obj)
    # stable's selector and pods carry no track: switching strategies does not restart them
    assert names.TRACK_LABEL not in stable["Deployment"]["spec"]["selector"]["matchLabels"]
    assert names.TRACK_LABEL not in template["metadata"]["labels"]
    assert render_canary(msvc, rendered, replicas=0)[1]["spec"]["replicas"] == 0


def test_the_revision_follows_the_pod_template_only() -> None:
    def revision(spec: dict) -> str | None:
        rendered = render_children(ModelService.from_body(body("svc", spec=spec)))
        return template_revision(next(o for o in rendered.objects if o["kind"] == "Deployment"))

    base = revision(SPEC)
    assert base and revision({**SPEC, "replicas": 5}) == base  # scaling is no new revision
    assert revision({**SPEC, "rollout": {**SPEC["rollout"], "progressDeadlineSeconds": 900}}) == base
    assert revision({**SPEC, "rollout": {"strategy": "RollingUpdate"}}) == base  # nor is the strategy
    assert revision({**SPEC, "model": {"uri": "https://h.example/other.onnx", "sha256": SHA}}) != base
    assert revision({**SPEC, "rollout": {**SPEC["rollout"], "preStopDelaySeconds": 3}}) != base


def test_output_agreement_adds_the_mirror_flags_to_the_canary_only() -> None:
    spec = {**SPEC, "rollout": {"strategy": "Canary", "canary": {
        "steps": [{"weight": 33, "pauseSeconds": 5}], "analysis": {"minOutputAgreement": 0.98, "mirrorSampleRate": 0.25}}}}
    msvc = ModelService.from_body(body("svc", spec=spec))
    rendered = render_children(msvc)
    stable = {o["kind"]: o for o in rendered.objects}["Deployment"]
    deployment = render_canary(msvc, rendered, replicas=1)[1]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    namespace = msvc.metadata.namespace
    assert command[-4:] == ["--mirror-to", f"http://svc.{namespace}.svc:{names.HTTP_PORT}", "--mirror-sample-rate", "0.25"]
    assert "--mirror-to" not in stable["spec"]["template"]["spec"]["containers"][0]["command"]
    assert template_revision(deployment) == template_revision(stable)  # the revision is still the spec's
    spec["rollout"]["canary"]["analysis"]["mirrorTo"] = "http://stable.example:8000"
    msvc = ModelService.from_body(body("svc", spec=spec))
    command = render_canary(msvc, render_children(msvc), replicas=1)[1]["spec"]["template"]["spec"]["containers"][0][
        "command"]
    assert command[-4:-2] == ["--mirror-to", "http://stable.example:8000"]
    # off by default, and never for Triton (it has no such flag)
    plain = ModelService.from_body(body("svc", spec=SPEC))
    assert "--mirror-to" not in render_canary(plain, render_children(plain), replicas=1)[1]["spec"]["template"]["spec"][
        "containers"][0]["command"]


def test_with_tls_the_canary_mirrors_to_the_service_over_https() -> None:
    """Stable serves HTTPS with the same Secret; the server trusts that Secret's certificate."""
    spec = {**SPEC, "tls": {"secretRef": {"name": "svc-tls"}}, "rollout": {"strategy": "Canary", "canary": {
        "steps": [{"weight": 33, "pauseSeconds": 5}], "analysis": {"minOutputAgreement": 0.98}}}}
    msvc = ModelService.from_body(body("svc", spec=spec))
    command = render_canary(msvc, render_children(msvc), replicas=1)[1]["spec"]["template"]["spec"]["containers"][0][
        "command"]
    assert command[-4:-2] == ["--mirror-to", f"https://svc.{msvc.metadata.namespace}.svc:{names.HTTP_PORT}"]
    assert "--tls-dir" in command
