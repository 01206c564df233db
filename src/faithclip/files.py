"""Writing files the one way faithclip does: strict JSON (``json_bytes``) and atomic replacement
(``write_atomic``), so no reader ever sees a half-written file or a NaN that JSON does not have.

What an output path names decides how it is written (``output_kind``):

- a regular file, or nothing yet: a temporary file beside it, fsynced, renamed over it (atomic);
- a symlink: written through to the file it points to (the link stays; a link to a regular file is
  replaced atomically at its target, a link to a device or FIFO is written into);
- ``-``: standard output;
- a FIFO or a character device (``/dev/null``, ``/dev/stdout``'s target, a terminal): written into, never
  replaced (a FIFO nobody reads is refused at once instead of blocking);
- a directory, a block device or a socket: refused, nothing written.

Every ``OSError`` while writing (``ENOSPC`` disk full, ``EDQUOT`` quota, ``EIO``, ``EROFS``, permissions)
becomes an ``OutputError`` naming the path, with no temporary file left behind. Inside
``all_or_nothing()`` a failure also undoes the files already written in the block (each put back as
it was), so a command's outputs are all new or all old.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import json
import math
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from faithclip.errors import FaithclipError

STDOUT = "-"


class OutputError(FaithclipError):
    """An output could not be written: disk full, quota, I/O error, or a path that is not ours to replace."""


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


# ---- what a path names ------------------------------------------------------------------------------
def write_failure(path: str | Path, error: OSError) -> str:
    """``cannot write PATH: No space left on device (ENOSPC)``: one line for any ``OSError``."""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    code = errno.errorcode.get(error.errno or 0)
    return f"cannot write {path}: {reason}" + (f" ({code})" if code else "")


def output_kind(path: str | Path) -> str:
    """What ``path`` names, for writing: ``"stdout"`` (``-``), ``"missing"``, ``"file"``, ``"fifo"``,
    ``"char device"``, ``"block device"``, ``"socket"`` or ``"directory"``; a symlink is followed to what
    it finally names (``OutputError`` for a loop or a link that cannot be followed)."""
    if str(path) == STDOUT:
        return "stdout"
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except (FileNotFoundError, NotADirectoryError):
        return "missing"  # nothing there (or a file where a parent directory should be), or a dangling symlink
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OutputError(f"cannot write {path}: it is a symlink loop; give a file name.") from error
        raise OutputError(write_failure(path, error)) from error
    for test, kind in (
        (stat.S_ISREG, "file"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "char device"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return kind
    return "special file"


REFUSED_KINDS = ("directory", "block device", "socket", "special file")
WRITTEN_THROUGH = ("stdout", "fifo", "char device")


def refusal(path: str | Path, kind: str) -> str:
    """Why a path of a refused ``kind`` is not written."""
    if kind == "directory":
        return f"{path} is a directory; give a file name, e.g. {Path(path) / 'out.json'}."
    return f"{path} is a {kind}; faithclip writes only regular files, FIFOs and character devices. Give a file name."


def _final_target(path: Path) -> Path:
    """The path a symlink chain finally names (``path`` itself when it is not a link)."""
    if not path.is_symlink():
        return path
    try:
        return Path(os.path.realpath(path, strict=False))
    except (OSError, RuntimeError) as error:  # a loop (RuntimeError before Python 3.13)
        raise OutputError(f"cannot write {path}: it is a symlink loop; give a file name.") from error


# ---- writing ----------------------------------------------------------------------------------------
_transaction: contextvars.ContextVar[list | None] = contextvars.ContextVar("faithclip_output_transaction", default=None)


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Files written with ``write_atomic`` inside this block are all kept, or, if the block fails, all put
    back as they were (a replaced file restored from a hard link kept until the block ends, a new file
    removed). What was written into a FIFO, device or standard output cannot be taken back."""
    done: list[tuple[Path, Path | None]] = []
    token = _transaction.set(done)
    try:
        yield
    except BaseException:
        for path, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, path)
                else:
                    path.unlink(missing_ok=True)
        raise
    else:
        for _, backup in done:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.unlink()
    finally:
        _transaction.reset(token)


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` as the module docstring says (atomically for a regular file); any
    failure is an ``OutputError`` naming the path, with nothing half-written.

    The temporary file is fsynced before the rename and the directory after it: without the first, a
    crash soon after can leave ``path`` renamed but empty (delayed allocation); without the second, the
    rename itself may be lost."""
    path = Path(path)
    kind = output_kind(path)
    if kind in REFUSED_KINDS:
        raise OutputError(refusal(path, kind))
    if kind in WRITTEN_THROUGH:
        _write_through(path, data, kind)
        return path
    target = _final_target(path)  # a symlink's file is replaced, the link kept
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_leftovers(target)
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent
        )
    except OSError as error:
        raise OutputError(write_failure(path, error)) from error
    backup = None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file the user's usual mode
        transaction = _transaction.get()
        if transaction is not None:
            backup = _keep_old(target)
        os.replace(temporary, target)
        if transaction is not None:
            transaction.append((target, backup))
        fsync_directory(target.parent)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise OutputError(write_failure(path, error)) from error
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by someone else
        return False
    return False


def _sweep_leftovers(target: Path) -> None:
    """Remove what a killed writer of ``target`` left beside it: its backup link ``.NAME.old-PID`` and its
    temporary file ``.NAME.PID.*.tmp``, when process PID no longer runs (SIGKILL gives it no chance to
    clean up). A live writer's files are left alone."""
    prefix = f".{target.name}."
    try:
        entries = [entry for entry in os.scandir(target.parent) if entry.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        rest = entry.name[len(prefix) :]
        if rest.startswith("old-"):
            pid = rest[4:]
        elif rest.endswith(".tmp") and rest.count(".") >= 2:
            pid = rest.split(".", 1)[0]
        else:
            continue
        if pid.isdigit() and int(pid) != os.getpid() and _process_gone(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _keep_old(target: Path) -> Path | None:
    """A hard link to the file ``target`` holds now (to put it back if the transaction fails), or None."""
    if not target.is_file():
        return None
    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
    backup.unlink(missing_ok=True)
    try:
        os.link(target, backup)
    except OSError:
        return None  # no hard links here: the old file cannot be put back, the new one is still complete
    return backup


_HELD: dict[str, int] = {}  # FIFOs opened by ``hold_output`` before the work, written (and closed) later


def _held_key(path: Path) -> str:
    return os.path.realpath(path)


def _open_written_through(path: Path) -> int:
    try:
        # O_NONBLOCK: opening a FIFO nobody reads fails (ENXIO) instead of waiting for ever
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as error:
        if error.errno == errno.ENXIO:
            raise OutputError(
                f"cannot write {path}: it is a FIFO that no process is reading; start the "
                "reader first, or give a file name."
            ) from error
        raise OutputError(write_failure(path, error)) from error


def hold_output(path: str | Path) -> None:
    """For a FIFO output, open it now (one ``OutputError`` line when no process reads it) and keep it open
    until ``write_atomic`` writes it: the check before the work must not close it, since closing a FIFO's
    only writer ends its reader's input. Other kinds of output need nothing held."""
    path = Path(path)
    if output_kind(path) != "fifo" or _held_key(path) in _HELD:
        return
    _HELD[_held_key(path)] = _open_written_through(path)


def _write_through(path: Path, data: bytes, kind: str) -> None:
    """Write ``data`` into standard output, a FIFO or a character device, never replacing it."""
    if kind == "stdout":
        try:
            sys.stdout.flush()
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except OSError as error:
            raise OutputError(write_failure("standard output", error)) from error
        return
    descriptor = _HELD.pop(_held_key(path), None)
    if descriptor is None:
        descriptor = _open_written_through(path)
    try:
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        view = memoryview(data)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]
    except OSError as error:
        raise OutputError(write_failure(path, error)) from error
    finally:
        os.close(descriptor)


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and fsync it; if that fails (disk full), cut the file back to its old
    length so that no torn line is left, and raise ``OutputError`` naming the path."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as error:
        raise OutputError(write_failure(path, error)) from error
    try:
        start = os.fstat(descriptor).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            os.fsync(descriptor)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, start)
            raise
    except OSError as error:
        raise OutputError(write_failure(path, error)) from error
    finally:
        os.close(descriptor)


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (renames, new files) durable."""
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
