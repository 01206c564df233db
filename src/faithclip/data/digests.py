"""Content digests of data files, cached by what ``stat`` says about them.

A data set's fingerprint must see an image replaced by another of the same size, so it hashes the
files' bytes (SHA-256). Reading 50,000 files again on every resume would cost seconds to minutes, so
each digest is kept with the file's size, modification time, change time and inode: while all four are
the same, the file was not rewritten (replacing or editing a file changes its change time, which no
user tool can set back), and the digest is reused. The cache lives in the run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from faithclip.explanation import write_atomic

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class FileDigests:
    """``digest(path)``: the SHA-256 of a file's bytes (hex), from the cache while ``stat`` is unchanged."""

    def __init__(self, cache_path: Path | None = None) -> None:
        self.cache_path = cache_path
        self.cached: dict[str, list] = {}  # path -> [size, mtime_ns, ctime_ns, inode, digest]
        self.current: dict[str, list] = {}
        if cache_path is not None and cache_path.is_file():
            try:
                self.cached = json.loads(cache_path.read_text())["files"]
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring the unreadable digest cache %s; every file is hashed again", cache_path)
                self.cached = {}

    def digest(self, path: Path) -> str:
        key = str(path)
        info = os.stat(path)
        signature = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        entry = self.current.get(key) or self.cached.get(key)  # a VOC image serves several cases
        if entry is not None and entry[:4] == signature:
            digest = entry[4]
        else:
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
        self.current[key] = [*signature, digest]
        return digest

    def changed(self) -> list[str]:
        """Files hashed now whose content differs from what the cache recorded (the run's earlier state)."""
        return [key for key, entry in self.current.items() if key in self.cached and self.cached[key][4] != entry[4]]

    def save(self) -> None:
        """Write the digests of this run's files (only those: files no longer in the set are forgotten)."""
        if self.cache_path is not None and self.current != self.cached:
            write_atomic(self.cache_path, json.dumps({"files": self.current}, separators=(",", ":")).encode())
