"""Which images the agent can run, and the local command each one stands for.

There is no image pulling here: a pod's image is only a name for one of this installation's
commands, the same ones the images' Dockerfiles put in ENTRYPOINT/CMD (server_image/Dockerfile,
operator/Dockerfile). Any registry and tag match, so the operator's rendered images run as they are.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalImage:
    """An image's entrypoint and default arguments, as in its Dockerfile."""

    repository: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]


SERVER = LocalImage("modelship-server", ("modelship-server",),
                    ("--model-repository", "/models", "--cache-dir", "/tmp/modelship-cache"))
OPERATOR = LocalImage("modelship", ("modelship",), ("run",))

_BY_NAME = {"modelship-server": SERVER, "modelship": OPERATOR, "modelship-operator": OPERATOR}
KNOWN_DESCRIPTION = ("images whose repository ends in modelship-server, modelship or modelship-operator "
                     "(any registry and tag)")


def repository_name(image: str) -> str:
    """The last path segment of an image reference, without tag or digest."""
    reference = image.split("@", 1)[0]
    last = reference.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def resolve(image: str) -> LocalImage | None:
    """The local image an image reference maps to, or None when the agent cannot run it."""
    return _BY_NAME.get(repository_name(image))


def unknown_image_message(image: str) -> str:
    return (f'image "{image}" cannot run on the local node agent: it runs no container runtime and '
            f"pulls nothing, only {KNOWN_DESCRIPTION}, as this installation's commands; "
            "schedule other images on kwok's nodes")


def argv(image: LocalImage, command: list[str] | None, args: list[str] | None) -> list[str]:
    """The kubelet's rule: command replaces ENTRYPOINT (and drops CMD), args replace CMD."""
    if command:
        return [*command, *(args or [])]
    if args:
        return [*image.entrypoint, *args]
    return [*image.entrypoint, *image.cmd]
