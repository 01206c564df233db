"""The scoring of the perturbed images of consecutive records in full forwards (``ForwardStream``).

A record's deletion, insertion and ROAD curves (the metrics with a ``ScoringPlan``) need perturbed images
scored; one record alone rarely fills a forward of ``batch_size`` images (Grad-ECLIP's protocol: 10 + 10).
The stream packs the images of consecutive records into forwards of exactly ``batch_size`` images, in
the order they come, and hands each record on (``ready``) once the last forward holding its images has run
and every record before it has been handed on: the records leave in the order they came in. Only the last
forward of a run is padded (with zero images, whose scores are dropped).

Every forward has the same shape whoever's images fill it, and a row's numbers depend on the forward's
shape, not on which other rows share it (each row of a matrix product is computed from that row alone;
bit-identical on one processor kind, which the run identity pins): so a record's numbers do not depend on
the records around it, and equal those of its images scored on their own in padded forwards of the same
size (``tests/unit/test_evaluate_streaming.py``). Any context of the data set can score any image: all hold
the same classifier weights.

What an interruption loses: the records whose images are in the forward being filled (fewer than
``batch_size`` images, so a few records at most); each is computed again when the run resumes.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from faithclip.evaluation.records import store
from faithclip.methods.context import Context
from faithclip.models.clip import ModelHandle

Deferred = list[tuple[str, Any]]  # (metric name, ScoringPlan) of one record


@dataclass
class _Entry:
    """A record in the stream: its plans still waiting for scores."""

    record: dict[str, Any]
    waiting: int  # plans not yet finished
    seconds: float = 0.0  # its share of the forwards' time so far


@dataclass
class _Plan:
    entry: _Entry
    name: str
    plan: Any
    pieces: list[torch.Tensor] = field(default_factory=list)  # (rows, K) logits, in order
    missing: int = 0  # rows not yet scored


class ForwardStream:
    """Scores the plans of consecutive records in forwards of exactly ``batch_size`` images; ``add`` a record
    with its deferred plans, ``close`` at the end. ``ready(record)`` receives every record, in order, once
    all its values are in."""

    def __init__(self, handle: ModelHandle, batch_size: int, ready: Callable[[dict[str, Any]], None]) -> None:
        self.handle = handle
        self.size = batch_size
        self.ready = ready
        self.queue: deque[_Entry] = deque()
        self.buffer: list[torch.Tensor] = []  # pieces of the next forward, (rows, 3, H, W) each
        self.owners: list[tuple[_Plan, int]] = []  # (plan, rows) of each piece of the buffer
        self.buffered = 0
        self.score_ctx: Context | None = None
        self.forward_seconds = 0.0

    def add(self, record: dict[str, Any], deferred: Deferred, score_ctx: Context) -> None:
        """Queue ``record`` and pull its plans' images into forwards (each run as soon as it is full)."""
        started, forwards_before = time.perf_counter(), self.forward_seconds
        entry = _Entry(record, len(deferred))
        self.queue.append(entry)
        self.score_ctx = score_ctx
        for name, plan in deferred:
            item = _Plan(entry, name, plan, missing=plan.count)
            if plan.count == 0:
                self._finish(item)
                continue
            for batch in plan.batches:
                while batch.shape[0]:
                    take = min(self.size - self.buffered, batch.shape[0])
                    self.buffer.append(batch[:take])
                    self.owners.append((item, take))
                    self.buffered, batch = self.buffered + take, batch[take:]
                    if self.buffered == self.size:
                        self._forward()
        # making its perturbed images (the forwards' time is shared by rows)
        entry.seconds += time.perf_counter() - started - (self.forward_seconds - forwards_before)
        self._release()

    def close(self) -> None:
        """Score what is left (one padded forward) and hand on every record."""
        if self.buffered:
            self._forward()
        self._release()
        assert not self.queue, "a record waits for scores no forward will give"

    def _forward(self) -> None:
        started = time.perf_counter()
        pixels = torch.cat(self.buffer)  # (n, 3, H, W)
        rows = pixels.shape[0]
        if rows < self.size:  # the run's last forward: zero images fill it, their scores are dropped
            pixels = torch.cat([pixels, pixels.new_zeros(self.size - rows, *pixels.shape[1:])])  # (size, 3, H, W)
        scores = self.score_ctx.score_images(pixels, batch_size=self.size)[:rows]  # (n, K)
        logits = self.handle.family.class_logits(self.handle.model, scores)  # (n, K)
        seconds = time.perf_counter() - started
        self.forward_seconds += seconds
        per_row = seconds / rows
        offset = 0
        for item, count in self.owners:
            item.pieces.append(logits[offset : offset + count])
            item.entry.seconds += per_row * count
            item.missing -= count
            offset += count
            if item.missing == 0:
                self._finish(item)
        self.buffer.clear()
        self.owners.clear()
        self.buffered = 0

    def _finish(self, item: _Plan) -> None:
        logits = torch.cat(item.pieces) if item.pieces else torch.empty(0, 0, device=self.handle.device)
        store(item.entry.record, item.name, item.plan.finish(logits))
        item.entry.waiting -= 1

    def _release(self) -> None:
        """Hand on the finished records at the head of the queue (the order they came in)."""
        while self.queue and self.queue[0].waiting == 0:
            entry = self.queue.popleft()
            entry.record["seconds"] = round(entry.record["seconds"] + entry.seconds, 4)
            self.ready(entry.record)
