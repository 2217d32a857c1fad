"""The model fetch step: the init container that downloads the model and verifies its sha256.

It runs inside the serving image (which installs this same `modelship` distribution) as
`python -m modelship.fetch`, with the standard library only. Each way it can fail has its
own exit code and a one-line termination message "<Reason>: <what happened>", so the
operator tells a bad URI from an unreachable host from a checksum mismatch without reading
logs (see `outcomes`).
"""
