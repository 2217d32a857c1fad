"""The ModelService API as the operator sees it: names, and pydantic models of the CRD.

`crds/modelservices.modelship.dev.yaml` is the source of truth; `v1alpha1` mirrors it so the
operator and `modelship render` work on typed, validated objects instead of raw dicts.
"""

GROUP = "modelship.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelService"
PLURAL = "modelservices"
SHORT_NAME = "msvc"

# The one field manager for everything the operator writes (server-side apply and status).
FIELD_MANAGER = "modelship"
