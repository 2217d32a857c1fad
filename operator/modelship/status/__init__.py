"""Status: what the ModelService reports, computed from what is observed, never assumed.

`diagnosis` reads pods and names the one problem a user must know about; `compute` turns a
Deployment, its pods and the diagnosis into conditions and counts; `conditions` keeps the
Kubernetes API conventions (lastTransitionTime moves only when status moves) and lists the
transitions that deserve an Event. All pure: the clock is an argument.
"""
