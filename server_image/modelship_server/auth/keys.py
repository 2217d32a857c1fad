"""The static API keys: read from a file or a mounted Secret folder, reloaded on change.

A Secret folder holds one key per data entry (the entry's name is the key's name, used in
logs instead of the key); a file holds one key per line. Only fingerprints are kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..filewatch import Signature, signature, visible_files
from .decide import fingerprint, parse_key_file

log = logging.getLogger(__name__)


class ApiKeys:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.names: dict[str, str] = {}  # fingerprint -> the key's name (file entry and line)
        self.sig: Signature = ()
        self.reloads = 0
        self.failures = 0

    def load(self) -> None:
        """Read the keys now; ValueError naming the path if there are none to read."""
        names = self._read()
        if not names:
            raise ValueError(f"--auth-api-keys {self.path}: no API keys found (one per line in a file, "
                             "or one per entry in a Secret folder)")
        self.names = names
        self.sig = signature([self.path])

    def _read(self) -> dict[str, str]:
        names: dict[str, str] = {}
        for f in visible_files(self.path):
            for i, key in enumerate(parse_key_file(f.read_text(errors="replace")), 1):
                names[fingerprint(key)] = f"{f.name}:{i}"
        return names

    def maybe_reload(self) -> bool:
        """Reload if the files changed; keep the old keys (and say so) when they cannot be read."""
        sig = signature([self.path])
        if sig == self.sig:
            return False
        self.sig = sig
        try:
            names = self._read()
        except OSError as exc:
            names, why = {}, str(exc)
        else:
            why = "no keys in it"
        if not names:
            self.failures += 1
            log.warning("API keys at %s cannot be read (%s): keeping the %d key(s) loaded before",
                        self.path, why, len(self.names))
            return False
        self.names = names
        self.reloads += 1
        log.info("API keys reloaded from %s: %d key(s)", self.path, len(names))
        return True

    def match(self, credential: str) -> str | None:
        """The key's name if `credential` is one of the keys, else None."""
        return self.names.get(fingerprint(credential))
