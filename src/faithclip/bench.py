"""``faithclip bench``: the cost of explaining, as ratios to a plain no-grad image forward, in ONE run.

Every figure is measured here, in this process (times: median over repeats, after a warm-up call) or in
a fresh subprocess per item (peak memory: the process loads the model, prepares the inputs, runs the item
once as a warm-up, resets its peak RSS, runs the item again and reads the new peak). Prompts are encoded once and reused, as a researcher explaining
ImageNet's classes would (``model.prompts``); the per-image cost is what is measured.

Ratios reported:
- time: median seconds of the item / median seconds of ``encode_image`` under ``torch.no_grad`` (1 image),
  the two timed alternately so that both see the same machine load;
- memory: the whole-process peak RSS of the item / that of a plain forward (weights included), each
  in a fresh process.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

ARCHITECTURES = {"B/16": 16, "B/32": 32}


@dataclass
class BenchRow:
    architecture: str
    item: str
    seconds: float
    time_ratio: float
    memory_ratio: float | None = None
    peak_ratio: float | None = None
    note: str = ""
    forward_seconds: float | None = None  # the plain forward's median, timed interleaved with this item


@dataclass
class BenchSetup:
    handle: object
    pixels: torch.Tensor
    original: object
    texts: list = field(default_factory=list)
    _prompts: dict = field(default_factory=dict)

    def prompts(self, k: int):
        """The first ``k`` prompts, tokenised and encoded once (encoding is not part of the per-image cost)."""
        if k not in self._prompts:
            self._prompts[k] = self.handle.prompts(self.texts[:k])
        return self._prompts[k]


def setup(
    architecture: str, ks: tuple[int, ...], reference: str | None = None, device: str = "cpu", dtype: str = "float32"
) -> BenchSetup:
    from PIL import Image

    from faithclip.models.loading import place
    from faithclip.models.random_init import random_b32

    handle = place(random_b32(reference, patch_size=ARCHITECTURES[architecture]), device, dtype)
    generator = torch.Generator().manual_seed(0)
    original = Image.fromarray((torch.rand(375, 500, 3, generator=generator) * 255).byte().numpy())
    pixels = handle.pixels(original)
    texts = [f"a photo of a class number {i}" for i in range(max(ks))]
    return BenchSetup(handle, pixels, original, texts)


def items(bench: BenchSetup, ks: tuple[int, ...], rise_masks: int) -> dict[str, Callable[[], object]]:
    """Name -> a zero-argument callable doing one unit of work."""
    from faithclip.api import explain
    from faithclip.registry import METHODS

    handle, pixels = bench.handle, bench.pixels
    one = bench.prompts(min(ks))
    work: dict[str, Callable[[], object]] = {}

    def forward():
        with torch.no_grad():
            return handle.encode_image(pixels)

    work["forward (no grad)"] = forward
    for method in ("attention_eclip", "grad_eclip"):
        for k in ks:
            work[f"{method} K={k}"] = lambda m=method, k=k: explain(handle, pixels, bench.prompts(k), m)
    if "grad_eclip_official" in METHODS:
        work["grad_eclip_official per pair (500x375 keep-size)"] = lambda: explain(
            handle, bench.original, one, "grad_eclip_official"
        )
    if "game" in METHODS:
        work["game (all layers) K=1"] = lambda: explain(handle, pixels, one, "game")
    if "rise" in METHODS:
        work[f"rise per map (N={rise_masks})"] = lambda: explain(handle, pixels, one, "rise", masks=rise_masks)
    work["deletion+insertion (Grad-ECLIP protocol) per image"] = lambda: _deletion_insertion(handle, pixels, bench)
    return work


def _deletion_insertion(handle, pixels, bench: BenchSetup):
    from faithclip.api import explain
    from faithclip.methods.context import Context
    from faithclip.metrics.case import MetricCase
    from faithclip.metrics.deletion import gradeclip_curves
    from faithclip.targets import Target

    prompts = bench.prompts(10)
    explanation = explain(handle, pixels, prompts.input_ids[:1], "attention_eclip")
    ctx = Context(handle, "image", pixels, prompts, Target())
    rgb = handle.preprocess.denormalize(pixels[0])
    case = MetricCase(score_ctx=ctx, rgb=rgb, patch_map=explanation.map, label=0, seed=0)
    return gradeclip_curves(case, "deletion"), gradeclip_curves(case, "insertion")


def interleaved_medians(
    function: Callable[[], object], forward: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median seconds of ``function`` and of ``forward``, timed alternately so that both see the same load."""
    function()  # warm-up
    forward()
    item_samples, forward_samples = [], []
    for _ in range(repeats):
        for function_, samples in ((forward, forward_samples), (function, item_samples)):
            synchronize()
            start = time.perf_counter()
            function_()
            synchronize()  # a GPU runs asynchronously: wait for the work, not for its launch
            samples.append(time.perf_counter() - start)
    return statistics.median(item_samples), statistics.median(forward_samples)


def synchronize() -> None:
    """Wait for queued GPU work (a no-op without CUDA)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_memory(
    architecture: str,
    item: str,
    ks: tuple[int, ...],
    rise_masks: int,
    reference: str | None,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict:
    """Run one item in a fresh interpreter (after one warm-up call, so one-time allocations are excluded);
    returns its resident memory before the item and the peak during it (bytes), from /proc/self/status
    after resetting the peak with /proc/self/clear_refs."""
    code = (
        "import json, gc; from faithclip import bench; "
        f"s = bench.setup({architecture!r}, {ks!r}, {reference!r}, {device!r}, {dtype!r}); "
        f"w = bench.items(s, {ks!r}, {rise_masks}); f = w[{item!r}]; f(); gc.collect(); "
        "base = bench.reset_peak(); f(); "
        "print(json.dumps({'base': base, 'peak': bench.status_bytes('VmHWM')}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def status_bytes(field_name: str) -> int:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def reset_peak() -> int:
    """Reset the process's peak RSS to its current RSS (Linux ``clear_refs`` 5); returns the current RSS."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return status_bytes("VmRSS")


def run(
    architectures=("B/16", "B/32"),
    ks=(1, 10, 100, 1000),
    repeats: int = 5,
    rise_masks: int = 400,
    memory: bool = True,
    reference: str | None = None,
    progress: Callable[[str], None] = lambda s: None,
    device: str = "cpu",
    dtype: str = "float32",
) -> list[BenchRow]:
    """Time every item; peak memory is the process's RSS (host memory: on a GPU it does not see the
    device's memory)."""
    torch.manual_seed(0)
    rows = []
    for architecture in architectures:
        bench = setup(architecture, tuple(ks), reference, device, dtype)
        work = items(bench, tuple(ks), rise_masks)
        forward = work["forward (no grad)"]
        times, ratios, forwards = {}, {}, {}
        for name, function in work.items():
            heavy = name.startswith(("rise", "deletion", "grad_eclip_official", "game"))
            times[name], forwards[name] = interleaved_medians(function, forward, 2 if heavy else repeats)
            ratios[name] = times[name] / forwards[name]
            progress(f"{architecture} {name}: {times[name]:.3f} s ({ratios[name]:.2f} x forward)")
        memory_of = {}
        if memory:
            for name in work:
                memory_of[name] = peak_memory(architecture, name, tuple(ks), rise_masks, reference, device, dtype)
                progress(f"{architecture} {name}: peak {memory_of[name]['peak'] / 2**20:.0f} MiB")
        base = memory_of.get("forward (no grad)")
        for name, seconds in times.items():
            row = BenchRow(architecture, name, seconds, ratios[name], forward_seconds=forwards[name])
            if base:
                own = memory_of[name]
                row.memory_ratio = (own["peak"] - own["base"]) / max(base["peak"] - base["base"], 1)
                row.peak_ratio = own["peak"] / base["peak"]
            rows.append(row)
    return rows


def format_rows(rows: list[BenchRow]) -> str:
    """Seconds, time ratio and whole-process peak-RSS ratio. (The increment ratio ``memory_ratio`` stays in
    the JSON only: after the warm-up call the allocator reuses cached memory, so increments of a few MiB
    are dominated by noise.)"""
    memory = any(r.peak_ratio is not None for r in rows)  # --no-memory: no empty column
    header = f"{'arch':<5} {'item':<52} {'seconds':>8} {'forward s':>9} {'x forward':>9}" + (
        f" {'peak RSS (x forward)':>21}" if memory else ""
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        forward = "" if r.forward_seconds is None else f"{r.forward_seconds:.3f}"
        peak = "" if r.peak_ratio is None else f"{r.peak_ratio:.2f}"
        lines.append(
            f"{r.architecture:<5} {r.item:<52} {r.seconds:>8.3f} {forward:>9} {r.time_ratio:>9.2f}"
            + (f" {peak:>21}" if memory else "")
        )
    lines.append(RATIO_NOTE)
    return "\n".join(lines)


RATIO_NOTE = (
    "x forward = seconds / forward s: the item's median time over that of the plain no-grad forward "
    "timed in turn with it in the same run; the forward row times the forward against itself, so its "
    "distance from 1.00 is the timing noise of this machine."
)
