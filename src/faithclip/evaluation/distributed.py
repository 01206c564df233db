"""Evaluation spread over the processes of ``torchrun`` (torch.distributed).

    torchrun --nproc-per-node N -m faithclip evaluate ... --out DIR

Rank ``r`` of ``N`` evaluates shard ``r/N`` into ``DIR/records.shard-r-of-N.jsonl`` (``evaluation.Shard``),
all ranks wait at a barrier, and rank 0 merges (``Evaluator.merge``: every shard's file checked, nothing
recomputed) and writes the results. The process group only synchronises: no tensor is exchanged, so
gloo (CPU) and NCCL (GPU) are interchangeable; records travel through the shared run folder (one node,
or a file system every node sees). Killing a rank ends the job (torchrun stops the others); running the
same command again resumes every shard from its own file.
"""

from __future__ import annotations

import datetime
import os

import torch

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
