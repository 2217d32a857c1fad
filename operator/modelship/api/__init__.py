"""The ModelService API as the operator sees it: names, and pydantic models of the CRD.

`crds/modelservices.modelship.dev.yaml` is the source of truth; `v1alpha1` mirrors it so the
operator and `modelship render` work on typed, validated objects instead of raw dicts. The
API's names live in `modelship.contracts` (the layers below this one use them too).
"""

from modelship.contracts import API_VERSION, FIELD_MANAGER, GROUP, KIND, PLURAL, SHORT_NAME, VERSION

__all__ = ["API_VERSION", "FIELD_MANAGER", "GROUP", "KIND", "PLURAL", "SHORT_NAME", "VERSION"]
