"""The run folder, shared by the processes of one run: shards, merging, and torchrun's process group.

A run makes its folder (``make_directories``; a failed run removes what it made, ``remove_created``), takes
its locks (``run_locks``), writes ``config.json`` once for all its processes (``share_identity``) and opens
the record files: its own, checked, and the others (``finished_elsewhere``). ``Shard(i, n)`` computes the
cases at positions ``i, i + n, ...`` into its own ``records.shard-i-of-n.jsonl`` (the folder lock shared
by the shards, its own lock exclusive, the same ``config.json``). A run without a shard, or a merge
(``Evaluator.merge``, which computes nothing), checks every record file of the folder, imports the records
of the other folders merged in (``import_sources``; ``refuse_missing`` names the shards a merge lacks), and
aggregates exactly as one process would: a record's numbers do not depend on the process that computed it
(the identity pins what could change them).

Under torchrun (``ProcessGroup``) rank ``r`` of ``N`` evaluates shard ``r/N``, all ranks wait at a barrier,
and rank 0 merges and writes the results. The process group only synchronises: no tensor is exchanged, so
gloo (CPU) and NCCL (GPU) are interchangeable; records travel through the shared run folder (one node, or a
file system every node sees). Killing a rank ends the job (torchrun stops the others); running the same
command again resumes every shard from its own file.

    torchrun --nproc-per-node N -m faithclip evaluate ... --out DIR
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from faithclip.data.digests import FileDigests
from faithclip.data.folders import LabelledSet
from faithclip.evaluation.config import EvaluationError, check_identity
from faithclip.evaluation.rundir import (
    LOCK_NAME,
    RecordFile,
    RunLock,
    create_once,
    finished_keys,
    record_paths,
    shard_records_name,
)
from faithclip.explanation import write_atomic


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the cases at positions ``index, index + count, ...`` of the data set.
    Round-robin over positions: neighbouring images (often one class) spread over all shards, and a
    larger ``--limit`` only adds cases, never moves one to another shard."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        index, slash, count = text.partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise EvaluationError(f"--shard {text!r} must look like I/N with 0 <= I < N, e.g. --shard 0/4.")
        shard = cls(int(index), int(count))
        if not 0 <= shard.index < shard.count:
            raise EvaluationError(f"--shard {text}: the index must be 0 to {shard.count - 1} for {shard.count} shards.")
        return shard

    def owns(self, position: int) -> bool:
        return position % self.count == self.index

    @property
    def records_name(self) -> str:
        return shard_records_name(self.index, self.count)

    @property
    def lock_name(self) -> str:
        return f"{LOCK_NAME}.shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def copy_examples(source: Path, out: Path) -> None:
    """The example crops a merged folder's shards saved, where ``out`` lacks them."""
    for image in sorted((source / "examples").glob("*.png")):
        if not (out / "examples" / image.name).exists():
            write_atomic(out / "examples" / image.name, image.read_bytes())


def make_directories(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; return those this call created (deepest last)."""
    missing = [directory for directory in [*reversed(out.parents), out] if not directory.exists()]
    created = []
    for directory in missing:
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # made by a concurrent run: not ours to remove
        except OSError as error:
            raise EvaluationError(
                f"cannot create output directory {directory}: {error.strerror}. Choose another --out."
            ) from error
        created.append(directory)
    if not out.is_dir():
        raise EvaluationError(f"{out} exists and is not a directory. Choose another --out.")
    return created


def remove_created(out: Path, created: list[Path]) -> None:
    """Remove what a failed run wrote into a folder it created, then the folders it created."""
    import shutil

    if out in created:
        shutil.rmtree(out, ignore_errors=True)
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            pass  # not empty or already gone: someone else's now


def run_locks(out: Path, shard: Shard | None, sources: Sequence[Path]) -> list[RunLock]:
    """The locks a run holds, in the order it takes them: the folder's (shared by the shards of a run; a whole
    run or a merge holds it alone), a shard's own, and each merged folder's (nothing may still be writing
    what is merged)."""
    locks = [RunLock(out, shared=shard is not None)]
    if shard is not None:
        locks.append(RunLock(out, name=shard.lock_name))
    return locks + [RunLock(source) for source in sources]


def share_identity(out: Path, identity: dict[str, Any], digests: FileDigests) -> None:
    """Write ``config.json`` unless it exists: once, atomically, by whichever process of the run comes first
    (one that finds it written checks it again), then save the data files' hashes for the next run."""
    if not create_once(out / "config.json", json.dumps(identity, indent=1).encode()):
        check_identity(out, identity, digests)  # another shard may have written it meanwhile
    digests.save()


def finished_elsewhere(
    out: Path, own: RecordFile, shard: Shard | None, check: Callable[[dict[str, Any]], str | None], repair: bool
) -> set[tuple[str, str]]:
    """The (case, method) keys of the records in ``own`` and in the folder's other record files. Under the
    exclusive lock (no ``shard``) every file is this run's to check (and to repair); a shard only reads the
    others' files, which their shards may be appending to."""
    done = set(own.done)
    for path in record_paths(out):
        if path.name == own.path.name:
            continue
        if shard is not None:  # another shard's file, perhaps being appended to: read only
            done |= finished_keys(path)
        else:  # under the exclusive lock every file is ours to check (and to repair)
            done |= RecordFile(path, check=check, repair=repair).done
    return done


def import_sources(
    sources: Sequence[Path],
    out: Path,
    records: RecordFile,
    done: set[tuple[str, str]],
    check: Callable[[dict[str, Any]], str | None],
    repair: bool,
) -> None:
    """Append to ``records`` each record of the ``sources`` folders (each line checked) that no file of
    ``out`` holds yet, and copy their example crops."""
    for source in sources:
        for path in record_paths(source):
            for record in RecordFile(path, check=check, repair=repair).read():
                if (record["case"], record["method"]) not in done:
                    records.append(record)
                    done.add((record["case"], record["method"]))
        copy_examples(source, out)


def refuse_missing(data: LabelledSet, jobs: Sequence[str | None], done: set[tuple[str, str]], out: Path) -> None:
    """A merge computes nothing: refuse one that lacks a record, naming the shards to run again."""
    missing = [
        (index, load.case_id, job or "-")
        for index, load in enumerate(data.cases)
        for job in jobs
        if (load.case_id, job or "-") not in done
    ]
    if not missing:
        return
    counts = sorted({int(p.name.split("-of-")[1].split(".")[0]) for p in out.glob("records.shard-*-of-*.jsonl")})
    owners = ""
    if counts:
        count = counts[-1]
        shards = sorted({index % count for index, _, _ in missing})
        owners = (
            f"; with {count} shards they belong to shard{'s' * (len(shards) > 1)} "
            f"{', '.join(f'{i}/{count}' for i in shards[:8])}{' ...' if len(shards) > 8 else ''}"
        )
    example = ", ".join(f"{case} / {job}" for _, case, job in missing[:3])
    raise EvaluationError(
        f"cannot merge: {len(missing)} records are in none of the folders ({example}{' ...' if len(missing) > 3 else ''})"
        f"{owners}. Run those shards again (the same command with --shard I/N), then merge again."
    )


# ---- torchrun ---------------------------------------------------------------------------------------
# A shard that finishes early waits at the barrier for the slowest: on ImageNet that can be hours, far
# beyond torch's default 30 minutes (10 for NCCL).
BARRIER_TIMEOUT = datetime.timedelta(days=7)


def launched() -> bool:
    """True in a process started by torchrun (or another torchelastic launcher)."""
    return torch.distributed.is_available() and torch.distributed.is_torchelastic_launched()


def rank_device(device: str) -> str:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process); an explicit
    ``cuda:N`` or ``cpu``/``mps`` is kept."""
    if device == "cuda" and launched():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


class ProcessGroup:
    """``with ProcessGroup(device) as group:`` joins the job's process group (NCCL for a CUDA device, else
    gloo) and leaves it on exit; ``group.rank``, ``group.world_size``, ``group.barrier()``."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)

    def __enter__(self) -> "ProcessGroup":
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL's barrier runs on the rank's own GPU
        torch.distributed.init_process_group(backend=backend, timeout=BARRIER_TIMEOUT)
        return self

    @property
    def rank(self) -> int:
        return torch.distributed.get_rank()

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size()

    def barrier(self) -> None:
        if self.device.type == "cuda":
            torch.distributed.barrier(device_ids=[self.device.index or 0])
        else:
            torch.distributed.barrier()

    def __exit__(self, *exc: object) -> None:
        torch.distributed.destroy_process_group()
