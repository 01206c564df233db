"""Writing files the one way faithclip does: strict JSON (``json_bytes``) and atomic replacement
(``write_atomic``), so no reader ever sees a half-written file or a NaN that JSON does not have."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None``: JSON has no such numbers (JavaScript's
    ``JSON.parse`` and every strict parser reject them), and all of them mean 'undefined' here."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    return json.dumps(strict_json(value), allow_nan=False, **kwargs)


def json_bytes(record: Any) -> bytes:
    """The one way faithclip writes a JSON file: strict JSON (NaN and infinities become null), tensors and
    numpy values as numbers or lists, anything else unknown (paths, dtypes) as its string."""
    plain = json.loads(json.dumps(record, default=_plain, allow_nan=True))
    return dumps_strict(plain, indent=1).encode()


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and numpy scalars
        return value.tolist()
    return str(value)


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and rename: never a half-written file.

    The temporary file is fsynced before the rename and the directory after it: without the first, a
    crash soon after can leave ``path`` renamed but empty (delayed allocation); without the second, the
    rename itself may be lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file the user's usual mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (renames, new files) durable."""
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
