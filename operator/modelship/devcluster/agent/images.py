"""Which images the agent can run, and the local environment and command each one stands for.

There is no image pulling here: a pod's image names one of modelship's images, and its container
runs that image's ENTRYPOINT/CMD (server_image/Dockerfile, operator/Dockerfile) from the image's
environment, built on this machine as the Dockerfile builds it (modelship.devcluster.imageenv:
the image's lock, then modelship's wheel), so pods run what the images hold, not the development
venv. Any registry and tag match, so the operator's rendered images run as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelship.devcluster import imageenv


@dataclass(frozen=True)
class LocalImage:
    """An image's entrypoint and default arguments, as in its Dockerfile, and its environment."""

    repository: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: imageenv.ImageEnv


SERVER = LocalImage("modelship-server", ("modelship-server",),
                    ("--model-repository", "/models", "--cache-dir", "/tmp/modelship-cache"), imageenv.SERVER)
OPERATOR = LocalImage("modelship", ("modelship",), ("run",), imageenv.OPERATOR)

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
