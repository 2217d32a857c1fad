"""`python -m modelship.fetch`: fetch the model into the repository, verify, then copy configs.

Writes the file under a temporary name, hashes it while streaming, and renames it into place
only when the sha256 matches, so the server never sees a partial or wrong file; the temporary
file is removed on every way out (SIGTERM included). A file already in place with the right
hash (an init container restarted in the same pod) is kept.

Bounds: a total deadline (--deadline-seconds) over every attempt, and a size cap (--max-bytes)
checked against Content-Length before the body and against the bytes as they arrive. A body
cut short, a reset or a stalled read is "unreachable" and retried with exponential backoff
while the deadline allows; a checksum mismatch means the whole announced body arrived and
differs. Every line printed or written to the termination log names URIs redacted and never
holds the values of the credential variables.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import os
import pathlib
import random
import shutil
import signal
import sys
import time
from typing import BinaryIO, Callable, Iterable, Mapping, Sequence

from modelship import modeluri
from modelship.fetch.outcomes import FetchError, FetchOutcome
from modelship.fetch.sources import PVC_MOUNT, Deadline, open_source

CHUNK = 1 << 20
# 20 minutes: enough for 2 GiB at 1.8 MB/s; past it the kubelet restarts the step with its backoff
DEFAULT_DEADLINE_SECONDS = 1200.0
DEFAULT_MAX_BYTES = 2 << 30  # protobuf's limit on one .onnx file; larger models need external data
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
# Variables of the credentials Secret whose values must never be printed.
SECRET_VARIABLES = ("AUTHORIZATION", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


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
        "--deadline-seconds", type=_positive(float), default=DEFAULT_DEADLINE_SECONDS,
        help=f"give up (ModelUnreachable) when this much time has passed over all attempts "
             f"(default {DEFAULT_DEADLINE_SECONDS:g})",
    )
    parser.add_argument(
        "--max-bytes", type=_positive(int), default=DEFAULT_MAX_BYTES,
        help=f"refuse (ModelTooLarge) a file larger than this (default {DEFAULT_MAX_BYTES}, 2 GiB)",
    )
    parser.add_argument(
        "--copy", action="append", default=[], metavar="SRC:DEST",
        help="also copy SRC to DEST after the model is verified (e.g. the generated config.pbtxt)",
    )
    parser.add_argument(
        "--termination-log", default="/dev/termination-log",
        help="file the one-line outcome is written to for the operator",
    )
    return parser.parse_args(argv)


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def retry_delay(attempt: int, left: float, *, jitter: float = 1.0, at_least: float | None = None) -> float | None:
    """Seconds to wait after failed attempt `attempt` (1, 2, 4, ... up to 30, times `jitter`,
    and no less than a server's Retry-After `at_least`), or None when the deadline's `left`
    seconds leave no room for another attempt."""
    delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** min(attempt - 1, 16) * jitter)
    delay = max(delay, at_least or 0.0)
    return delay if delay < left else None


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with URIs redacted and each secret value (and a bearer token's own part) removed."""
    text = modeluri.redact_text(text)
    for secret in secrets:
        for value in (secret, secret.partition(" ")[2]):
            if len(value) >= 4:
                text = text.replace(value, modeluri.REDACTED)
    return text


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    *, uri: str, sha256: str, dest: pathlib.Path, env: Mapping[str, str], pvc_mount: str = PVC_MOUNT,
    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS, max_bytes: int = DEFAULT_MAX_BYTES,
    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
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
    deadline = Deadline.after(deadline_seconds, clock)
    try:
        attempt = 0
        while True:
            attempt += 1
            try:
                size, actual = _download(parsed, partial, env=env, pvc_mount=pvc_mount, deadline=deadline,
                                         max_bytes=max_bytes)
                break
            except FetchError as error:
                if error.outcome is not FetchOutcome.UNREACHABLE:
                    raise
                delay = retry_delay(attempt, deadline.left(), jitter=random.uniform(0.8, 1.2),
                                    at_least=error.retry_after)
                if delay is None:
                    raise FetchError(FetchOutcome.UNREACHABLE,
                                     f"{error} (gave up after {attempt} attempt{'s' * (attempt > 1)}: "
                                     f"the {deadline_seconds:g} s deadline leaves no time for another)") from None
                log(f"attempt {attempt} failed: {error}; retrying in {delay:.1f} s")
                sleep(delay)
        if actual != expected:
            raise FetchError(
                FetchOutcome.CHECKSUM_MISMATCH,
                f"{parsed.redacted}: sha256 is {actual}, expected {expected} ({size} bytes read)",
            )
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return size


def _download(parsed: modeluri.ModelURI, partial: pathlib.Path, *, env: Mapping[str, str], pvc_mount: str,
              deadline: Deadline, max_bytes: int) -> tuple[int, str]:
    """One attempt: stream the source into `partial`, hashing as it goes; (size, sha256)."""
    source = open_source(parsed, env=env, deadline=deadline, pvc_mount=pvc_mount)
    try:
        announced = source.length
        if announced is not None and announced > max_bytes:
            raise FetchError(FetchOutcome.TOO_LARGE, f"{parsed.redacted}: {announced} bytes announced, "
                                                     f"over the cap of {max_bytes} bytes")
        of = f" of {announced}" if announced is not None else ""
        digest = hashlib.sha256()
        size = 0
        with open(partial, "wb") as out:
            while True:
                deadline.check(parsed, f"after {size}{of} bytes")
                try:
                    chunk = source.read1(CHUNK)
                except (OSError, http.client.HTTPException) as error:  # reset, timeout, a chunked body cut
                    raise FetchError(FetchOutcome.UNREACHABLE, f"{parsed.redacted}: transfer failed after "
                                                               f"{size}{of} bytes: {type(error).__name__}: {error}") from None
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(FetchOutcome.TOO_LARGE, f"{parsed.redacted}: more than the cap of "
                                                             f"{max_bytes} bytes arrived")
                digest.update(chunk)
                _write(out, chunk, parsed, size)
        if announced is not None and size < announced:
            raise FetchError(FetchOutcome.UNREACHABLE, f"{parsed.redacted}: the body ended after {size}{of} bytes")
    finally:
        source.close()
    return size, digest.hexdigest()


def _write(out: BinaryIO, chunk: bytes, parsed: modeluri.ModelURI, size: int) -> None:
    try:
        out.write(chunk)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise FetchError(FetchOutcome.TOO_LARGE, f"{parsed.redacted}: no space left to write it after "
                                                     f"{size} bytes ({error.strerror})") from None
        raise


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    env = os.environ if env is None else env
    secrets = [env[name] for name in SECRET_VARIABLES if env.get(name)]

    def say(line: str) -> None:
        print(scrub(line, secrets), file=sys.stderr)

    try:
        size = fetch(uri=args.uri, sha256=args.sha256, dest=pathlib.Path(args.dest), env=env,
                     pvc_mount=args.pvc_mount, deadline_seconds=args.deadline_seconds, max_bytes=args.max_bytes,
                     log=say)
        for pair in args.copy:
            src, _, dst = pair.partition(":")
            pathlib.Path(dst).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    except FetchError as error:
        return _fail(args.termination_log, scrub(error.termination_message(), secrets), error.outcome.exit_code)
    except Exception as error:  # noqa: BLE001 - a local fault (disk, permissions) or a bug: one line, no traceback
        return _fail(args.termination_log, scrub(f"FetchFailed: {type(error).__name__}: {error}", secrets)[:4000], 1)
    line = scrub(f"Fetched: {args.uri} ({size} bytes, sha256 verified) to {args.dest}", secrets)
    print(line)
    _write_termination_log(args.termination_log, line)
    return 0


def _fail(termination_log: str, line: str, code: int) -> int:
    print(line, file=sys.stderr)
    _write_termination_log(termination_log, line)
    return code


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM (the pod is deleted): unwind, so the temporary file is removed on the way out."""
    raise SystemExit(128 + signum)


def _write_termination_log(path: str, line: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(line + "\n")
    except OSError:
        pass  # outside Kubernetes there may be no termination log; stderr has the line


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    raise SystemExit(main())
