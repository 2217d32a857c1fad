"""`python -m modelship.fetch`: fetch the model into the repository, verify, then copy configs.

Writes the file under a temporary name, hashes it while streaming, and renames it into place
only when the sha256 matches, so the server never sees a partial or wrong file. A file
already in place with the right hash (an init container restarted in the same pod) is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import shutil
import sys
import time
from typing import Mapping, Sequence

from modelship import modeluri
from modelship.fetch.outcomes import FetchError, FetchOutcome
from modelship.fetch.sources import PVC_MOUNT, open_source

CHUNK = 1 << 20
RETRIES = 3  # transient network failures; the kubelet's restart backoff covers longer outages


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modelship.fetch",
        description="Fetch a model file, verify its sha256, and place it in a model repository.",
    )
    parser.add_argument("--uri", required=True, help="https://, http://, s3:// or pvc:// URI of the model")
    parser.add_argument("--sha256", required=True, help="expected SHA-256 of the file (64 hex characters)")
    parser.add_argument("--dest", required=True, help="where the verified file goes, e.g. /models/m/1/model.onnx")
    parser.add_argument("--pvc-mount", default=PVC_MOUNT, help="where the pvc:// claim is mounted")
    parser.add_argument(
        "--copy", action="append", default=[], metavar="SRC:DEST",
        help="also copy SRC to DEST after the model is verified (e.g. the generated config.pbtxt)",
    )
    parser.add_argument(
        "--termination-log", default="/dev/termination-log",
        help="file the one-line outcome is written to for the operator",
    )
    return parser.parse_args(argv)


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    *, uri: str, sha256: str, dest: pathlib.Path, env: Mapping[str, str], pvc_mount: str = PVC_MOUNT,
    sleep=time.sleep,  # noqa: ANN001 - injectable for tests
) -> int:
    """Place the verified model at `dest`; return its size in bytes or raise FetchError."""
    try:
        parsed = modeluri.parse(uri)
    except modeluri.InvalidModelURI as error:
        raise FetchError(FetchOutcome.INVALID_URI, str(error)) from None
    expected = sha256.lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise FetchError(FetchOutcome.INVALID_URI, f"--sha256 must be 64 hexadecimal characters; got {sha256!r}")
    if dest.is_file() and sha256_of(dest) == expected:
        return dest.stat().st_size
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    for attempt in range(1, RETRIES + 1):
        try:
            size, actual = _download(parsed, partial, env=env, pvc_mount=pvc_mount)
            break
        except FetchError as error:
            if error.outcome is not FetchOutcome.UNREACHABLE or attempt == RETRIES:
                raise
            print(f"attempt {attempt} failed: {error}; retrying", file=sys.stderr)
            sleep(2.0 * attempt)
    if actual != expected:
        partial.unlink(missing_ok=True)
        raise FetchError(
            FetchOutcome.CHECKSUM_MISMATCH,
            f"{uri}: sha256 is {actual}, expected {expected} ({size} bytes read)",
        )
    os.replace(partial, dest)
    return size


def _download(parsed: modeluri.ModelURI, partial: pathlib.Path, *, env: Mapping[str, str], pvc_mount: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open_source(parsed, env=env, pvc_mount=pvc_mount) as source, open(partial, "wb") as out:
        try:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        except OSError as error:  # a connection dropped mid-body
            raise FetchError(FetchOutcome.UNREACHABLE, f"{parsed.raw}: transfer failed after {size} bytes: {error}") from None
    return size, digest.hexdigest()


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    env = os.environ if env is None else env
    try:
        size = fetch(uri=args.uri, sha256=args.sha256, dest=pathlib.Path(args.dest), env=env, pvc_mount=args.pvc_mount)
        for pair in args.copy:
            src, _, dst = pair.partition(":")
            pathlib.Path(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    except FetchError as error:
        line = error.termination_message()
        print(line, file=sys.stderr)
        _write_termination_log(args.termination_log, line)
        return error.outcome.exit_code
    line = f"Fetched: {args.uri} ({size} bytes, sha256 verified) to {args.dest}"
    print(line)
    _write_termination_log(args.termination_log, line)
    return 0


def _write_termination_log(path: str, line: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(line + "\n")
    except OSError:
        pass  # outside Kubernetes there may be no termination log; stderr has the line


if __name__ == "__main__":
    raise SystemExit(main())
