"""The run folder of an evaluation: its lock, its record file, and its set of results.

- ``RunLock``: one run at a time per folder (``fcntl.flock`` on ``DIR/.lock``). The kernel releases the
  lock when its holder dies, so a killed run never leaves a stale lock behind; the file names the holder.
  The shards of a run spread over processes hold ``DIR/.lock`` SHARED (so a whole-folder run or a merge,
  which hold it exclusively, cannot start while any shard runs, and no shard while they run) and each
  holds its own ``DIR/.lock.shard-I-of-N`` exclusively (one process per shard).
- Record files: ``records.jsonl`` (a one-process run, and what a merge imports) and one
  ``records.shard-I-of-N.jsonl`` per shard; only its owner appends to a file. ``record_paths`` lists them
  in the fixed order in which a record found twice is read from the first (``read_records``).
- ``RecordFile``: ``records.jsonl``, one strict-JSON line per finished record, fsynced before the next is
  computed. Reading checks every line; a damaged line (not JSON, NUL bytes, not a record, a duplicate)
  stops the run with its file and line number, and ``repair=True`` drops such lines so that their
  records are computed again. A torn last line (killed mid-write) is expected and dropped.
- ``write_result_set``: ``results.json``, ``results.md`` and ``report.html`` are one set. It is written
  into a new hidden directory, fsynced, then published by replacing the ``DIR/results`` symlink in one
  rename; ``DIR/results.json`` etc. are links through it. A reader sees the old set or the new one,
  never a mix (a reader that must read several files of one set resolves ``DIR/results`` once).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from faithclip.errors import FaithclipError
from faithclip.files import OutputError, append_durably, dumps_strict, fsync_directory, write_atomic, write_failure

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
RECORDS_NAME = "records.jsonl"
_SHARD_RECORDS = "records.shard-"
RESULTS_LINK = "results"
_SET_PREFIX = ".results-"


class RunFolderError(FaithclipError):
    """The run folder is in use by another run, or its records are damaged."""


# ---- the lock ---------------------------------------------------------------------------------------
class RunLock:
    """A non-blocking lock on a run folder (``name``: the folder's own or a shard's), held from ``acquire``
    to ``release``; exclusive, or ``shared`` with the other shards of the folder."""

    def __init__(self, directory: Path, name: str = LOCK_NAME, shared: bool = False) -> None:
        self.path = Path(directory) / name
        self.shared = shared
        self.descriptor: int | None = None

    def acquire(self) -> "RunLock":
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise RunFolderError(
                f"{self.path.parent} is in use by another evaluation ({self.holder()}); wait until it finishes "
                "(then run this command again to use its records), or pass another --out."
            ) from None
        if not self.shared:  # the shards sharing the folder lock name themselves in their own lock files
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "command": " ".join(sys.argv)[:200],
            }
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        self.descriptor = descriptor
        return self

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (for the folder lock held by shards: the shards)."""

        def named(path: Path) -> str | None:
            try:
                holder = json.loads(path.read_text())
                return f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['command']}"
            except (OSError, ValueError, KeyError, TypeError):
                return None

        own = named(self.path)
        if own:
            return own
        shards = [text for path in sorted(self.path.parent.glob(LOCK_NAME + ".shard-*")) if (text := named(path))]
        if shards:
            return "shards: " + "; ".join(shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
        return "a process that has not yet said who it is"

    def release(self) -> None:
        if self.descriptor is not None:
            if not self.shared:
                os.ftruncate(self.descriptor, 0)
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)
            os.close(self.descriptor)
            self.descriptor = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- the record files -------------------------------------------------------------------------------
def shard_records_name(index: int, count: int) -> str:
    return f"{_SHARD_RECORDS}{index}-of-{count}.jsonl"


def record_paths(out: Path) -> list[Path]:
    """The folder's record files: ``records.jsonl`` first, then the shards' by shard count and index."""

    def order(path: Path) -> tuple[int, int, str]:
        index, _, count = path.name[len(_SHARD_RECORDS) : -len(".jsonl")].partition("-of-")
        return (int(count), int(index), path.name) if index.isdigit() and count.isdigit() else (1 << 30, 0, path.name)

    shards = sorted(out.glob(f"{_SHARD_RECORDS}*-of-*.jsonl"), key=order)
    return ([out / RECORDS_NAME] if (out / RECORDS_NAME).exists() else []) + shards


def finished_keys(path: Path) -> set[tuple[str, str]]:
    """The (case, method) keys of the complete, well-formed lines of a record file that ANOTHER process
    may be appending to: read only (a torn or damaged line is its owner's to repair, and is not counted)."""
    keys: set[tuple[str, str]] = set()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return keys
    for line in data.split(b"\n")[:-1]:
        try:
            record = json.loads(line, parse_constant=_refuse_constant)
        except ValueError:
            continue
        if record_problem(record) is None:
            keys.add((record["case"], record["method"]))
    return keys


def create_once(path: Path, data: bytes) -> bool:
    """Write ``path`` if it does not exist, atomically with respect to other processes doing the same
    (a complete file is linked into place; ``link`` fails when the name exists). True if this call wrote it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{socket.gethostname()}.new")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
        fsync_directory(path.parent)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        raise OutputError(write_failure(path, error)) from error
    finally:
        temporary.unlink(missing_ok=True)


class _NonFinite(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity`` in a record: JSON has no such numbers; faithclip never writes them."""


def _refuse_constant(name: str) -> float:
    raise _NonFinite(name)


def record_problem(record: Any) -> str | None:
    """What makes ``record`` not a record (``None``: it has the fields every record has)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    for key, kind in (("case", str), ("method", str), ("values", dict)):
        if not isinstance(record.get(key), kind):
            return f"no {key!r} {kind.__name__}" if key not in record else f"{key!r} is not a {kind.__name__}"
    return None


def _read_line(line: bytes, check: Callable[[dict[str, Any]], str | None] | None) -> tuple[Any, str | None]:
    """A complete line of a record file: its record, and what makes it damaged (``None``: nothing)."""
    if b"\0" in line:
        return None, "NUL bytes (what a crash can leave)"
    try:
        record = json.loads(line, parse_constant=_refuse_constant)
    except _NonFinite as constant:
        return None, f"{constant} in a value (faithclip writes an undefined value as null)"
    except ValueError:
        return None, "not valid JSON"
    return record, record_problem(record) or (check(record) if check else None)


class RecordFile:
    """``records.jsonl``: append-only, each line fsynced; every line checked when the file is opened.

    ``check(record)`` adds the caller's own test of a record (e.g. that every metric has its values);
    it returns what is wrong, or ``None``.
    """

    def __init__(
        self, path: Path, check: Callable[[dict[str, Any]], str | None] | None = None, repair: bool = False
    ) -> None:
        self.path = path
        self.done: set[tuple[str, str]] = set()
        if not path.exists():
            return
        *complete, tail = path.read_bytes().split(b"\n")  # everything before the last newline is complete
        first_seen: dict[tuple[str, str], tuple[int, bytes]] = {}
        damaged: dict[int, str] = {}
        conflicting: set[tuple[str, str]] = set()
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            record, problem = _read_line(line, check)
            if problem is None:
                key = (record["case"], record["method"])
                if key in first_seen:
                    first_number, first_line = first_seen[key]
                    problem = f"a second record of {key[0]} / {key[1]} (first on line {first_number})"
                    if line != first_line:
                        conflicting.add(key)
                else:
                    first_seen[key] = (number, line)
            if problem is not None:
                damaged[number] = problem
        if damaged and not repair:
            number, problem = next(iter(damaged.items()))
            more = len(damaged) - 1
            others = f" (and {more} more damaged line{'s' * (more > 1)})" if more else ""
            raise RunFolderError(
                f"{path}:{number}: {problem}{others}; run the same command with --repair to drop the damaged "
                "lines and compute those records again."
            )
        kept = [(number, line) for key, (number, line) in first_seen.items() if key not in conflicting]
        dropped = sorted(set(damaged) | {number for key, (number, _) in first_seen.items() if key in conflicting})
        if tail.strip():
            logger.warning("dropping a half-written record at the end of %s", path)
        if dropped:
            lines = path.read_bytes().split(b"\n")
            append_durably(path.with_name(path.name + ".dropped"), b"".join(lines[n - 1] + b"\n" for n in dropped))
            logger.warning(
                "%s: dropped %d damaged line(s) (%s; kept in %s.dropped); their records are computed again",
                path,
                len(dropped),
                ", ".join(map(str, dropped[:10])),
                path.name,
            )
        if dropped or tail.strip():
            write_atomic(path, b"".join(line + b"\n" for _, line in sorted(kept)))
        self.done = {key for key, _ in first_seen.items() if key not in conflicting}

    def append(self, record: dict[str, Any]) -> None:
        key = (record["case"], record["method"])
        if key in self.done:
            raise RunFolderError(f"{self.path}: the record of {key[0]} / {key[1]} is already written.")
        line = dumps_strict(record, separators=(",", ":")) + "\n"
        append_durably(self.path, line.encode())  # all of the line or none of it (disk full: cut back)
        self.done.add(key)

    def read(self) -> list[dict[str, Any]]:
        """The records, one per (case, method): a repeated key is read once (the first)."""
        if not self.path.exists():
            return []
        records, seen = [], set()
        for line in self.path.read_bytes().split(b"\n")[:-1]:
            if not line.strip():
                continue
            record = json.loads(line)
            key = (record["case"], record["method"])
            if key not in seen:
                seen.add(key)
                records.append(record)
        return records


def read_records(out: Path) -> list[dict[str, Any]]:
    """Every record of the folder, one per (case, method), from its files in ``record_paths`` order (a
    record found in two files is read from the first)."""
    records, seen = [], set()
    for path in record_paths(out):
        for record in RecordFile(path).read():
            key = (record["case"], record["method"])
            if key not in seen:
                seen.add(key)
                records.append(record)
    return records


# ---- the result set ---------------------------------------------------------------------------------
def write_result_set(out: Path, files: dict[str, bytes]) -> Path:
    """Publish ``files`` (name -> bytes) as the run's current result set, all at once.

    The set goes into ``out/.results-<digest>/`` (each file and the directory fsynced); the links
    ``out/<name> -> results/<name>`` are made (they resolve in the old set, or nowhere on a first run);
    then the symlink ``out/results`` is replaced by one pointing to the new set (rename over the old link:
    atomic), so a reader sees the old set or the new one, never a mix. Older sets are removed afterwards."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    final = out / f"{_SET_PREFIX}{digest.hexdigest()[:16]}"
    if not final.is_dir():
        staging = out / f"{_SET_PREFIX}staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            for name, data in files.items():
                with open(staging / name, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            fsync_directory(staging)
            os.replace(staging, final)
        except BaseException as error:  # disk full, interrupted: no half-written set left behind
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(error, OSError):
                raise OutputError(write_failure(error.filename or staging, error)) from error
            raise
    for name in files:  # the links by name first: until ``results`` flips they resolve in the old set (or
        link = out / name  # nowhere, on a first run), so a kill between two of them never shows a mix
        if not (link.is_symlink() and os.readlink(link) == f"{RESULTS_LINK}/{name}"):
            _replace_link(link, f"{RESULTS_LINK}/{name}")  # also replaces a plain file of an older version
    _replace_link(out / RESULTS_LINK, final.name)  # the one atomic step that publishes the whole set
    for stale in out.iterdir():
        if stale.name.startswith(_SET_PREFIX) and stale != final:
            shutil.rmtree(stale, ignore_errors=True)
        elif stale.is_symlink() and os.readlink(stale).startswith(f"{RESULTS_LINK}/") and stale.name not in files:
            stale.unlink()  # e.g. report.html of an earlier set, when this one has none
    fsync_directory(out)
    return final


def _replace_link(link: Path, target: str) -> None:
    temporary = link.with_name(f".{link.name}.link-{os.getpid()}")
    if link.is_dir() and not link.is_symlink():
        raise RunFolderError(f"{link} is a directory; move it away so that the results can be written.")
    try:
        temporary.unlink(missing_ok=True)
        os.symlink(target, temporary)
        os.replace(temporary, link)
        fsync_directory(link.parent)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(write_failure(link, error)) from error
