"""P1, detected: record what a method did to the model while it ran, instead of trusting what it declares.

"Debunking Grad-ECLIP" (arXiv 2605.12952) found a published method that silently explained another model;
a declared flag would not have caught it. ``Recorder`` watches the model during one run of a method and
reports every departure it saw, each naming the module or tensor:

    before      every parameter and buffer (object, in-place version counter, a clone of its values),
                every module's hook dictionaries, ``type(m).forward`` and instance ``forward``, ``training``
    during      every call of every module of the model, through torch's GLOBAL module pre/post-forward
                hooks (the model itself carries no hook of ours): its caller in the model's own call tree,
                its state at that moment (weights edited, forward swapped, mode flipped, hooks attached),
                the inputs of each tower (pixels at the patch embedding, token ids at the token embedding)
                and every embedding it produced (outputs of the projections)
    after       the same snapshot again: what was left changed, what was changed and restored

The model's own behaviour comes from ONE recorded plain forward of each tower on the model's own input
(``Recorder.reference``): its call tree (which module calls which) and its embeddings. Every embedding a
method produces is then compared with them (relative L2 distance, ``tol``: by default the rounding bound
of the model's dtype, ``faithclip.numerics``):

- on the model's own input it must BE the model's embedding; when it is not, the method explained another
  forward (parts recomputed outside the model's own forward, a hook, an edited weight): a departure;
- from an input of another size (image tower) it explains another input: a departure;
- from a same-size input that is not the model's (perturbed, masked, noised) it is a perturbation query,
  recorded as a note (what RISE, occlusion and Integrated Gradients do; the model is untouched);
- parts of the model called outside their place in the call tree are a departure when the embedding they
  lead to is not the model's, and a note when it is (a verified re-evaluation, e.g. Attention-ECLIP's
  last-layer fast path); when they lead to no embedding at all they are ``unverified``.

Severities: ``departure`` (P1 fails), ``unverified`` (P1 is inconclusive), ``note``. Findings also carry a
category (``model`` or ``input``), which is what a method's declared ``modifies_model`` / ``modifies_input``
claim is checked against. Limits: a same-size input with a different crop is counted as a perturbation, not
a departure; a computation that uses the model's tensors without calling its modules (``F.linear(x,
module.weight)``) is not seen, except that an edited-and-restored weight shows as ``unverified``; text
inputs have no size rule (a different text is a note). Every hook is removed in ``finally``.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
from torch.nn.modules import module as torch_module

from faithclip.numerics import rounding_rtol

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
SEVERITIES = ("departure", "unverified", "note")


@dataclass
class Finding:
    kind: str  # e.g. "weight_edited", "hook_left", "input_size"
    where: str  # the module or tensor, by its name in the model
    detail: str
    severity: str  # "departure", "unverified" or "note"
    category: str  # "model" or "input"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class _InputEvent:
    tower: str
    shape: tuple[int, ...]
    matched: list[int | None]  # per row: the index of the model's own input row it equals, or None
    other_size: bool  # image rows of another height x width than the model's input


@dataclass
class _Tower:
    input_module: torch.nn.Module
    projection: torch.nn.Module  # the last module before the score (Family.embedding_module)
    own_input: torch.Tensor  # (B, 3, H, W) pixels or (K, L) token ids
    own_embeds: torch.Tensor | None = None  # (B or K, E), from the reference forward
    current: _InputEvent | None = None


def _describe_hook(hook: Any) -> str:
    function = getattr(hook, "__func__", hook)
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


def _state_snapshot(model: torch.nn.Module, names: dict[int, str]) -> dict[str, Any]:
    tensors = {}
    for prefix, module in model.named_modules():
        for kind in ("_parameters", "_buffers"):
            for name, tensor in getattr(module, kind).items():
                if tensor is not None:
                    full = f"{prefix}.{name}" if prefix else name
                    tensors[full] = (tensor, tensor._version, tensor.detach().clone(), tensor.requires_grad)
    return {
        "tensors": tensors,
        "hooks": {names[id(m)]: {d: dict(getattr(m, d)) for d in HOOK_DICTS} for m in model.modules()},
        "forward": {names[id(m)]: (type(m).forward, m.__dict__.get("forward")) for m in model.modules()},
        "training": {names[id(m)]: m.training for m in model.modules()},
        "global": {
            d: dict(getattr(torch_module, d))
            for d in (
                "_global_forward_hooks",
                "_global_forward_pre_hooks",
                "_global_backward_hooks",
                "_global_backward_pre_hooks",
            )
        },
    }


class Recorder:
    """Watch a transformers model while a method runs (see the module docstring). Where each side's input
    enters and its embedding leaves is the family's declaration (``Family.input_module``,
    ``Family.embedding_module``); a side the family lacks (a classifier's text) is not watched.

    >>> recorder = Recorder(handle.model, pixels, input_ids)
    >>> recorder.reference(handle, text_batch)   # the model's own forward, recorded
    >>> with recorder:
    ...     result = method(ctx)
    >>> recorder.findings()
    """

    def __init__(
        self, model: torch.nn.Module, pixels: torch.Tensor, input_ids: torch.Tensor, tol: float | None = None
    ) -> None:
        from faithclip.models.families import family_of

        family = family_of(model)
        self.model = model
        # relative L2 distance under which two embeddings are the same: by default the rounding bound of the
        # model's dtype (two forwards of another batch shape agree to rounding only; docs/testing.md)
        dtype = next(model.parameters()).dtype
        self.tol = rounding_rtol(dtype) if tol is None else tol
        self.names = {id(m): (name or "model") for name, m in model.named_modules()}
        inputs = {"image": pixels.detach(), "text": input_ids.detach()}
        self.towers = {
            side: _Tower(family.input_module(model, side), family.embedding_module(model, side), inputs[side])
            for side in ("image", "text")
            if family.has_side(side)
        }
        self._by_input = {id(t.input_module): side for side, t in self.towers.items()}
        self._by_projection = {id(t.projection): side for side, t in self.towers.items()}
        self.own_edges: set[tuple[str, str | None]] = set()
        self._recording_reference = False
        self._handles: list[Any] = []
        self._reset_run()

    def _reset_run(self) -> None:
        self._stack: list[str] = []
        self._before: dict[str, Any] | None = None
        self._seen: dict[tuple[str, str], Finding] = {}  # (kind, where) -> first finding during calls
        self._outside: Counter = Counter()  # module -> calls outside its place in the model's call tree
        self._pending_outside: set[str] = set()  # outside calls since the last embedding
        self._outside_verified: set[str] = set()
        self._outside_departed: set[str] = set()
        self._hooks_during: dict[str, set[str]] = {}
        self._own_mismatch: dict[str, float] = {}  # projection -> largest distance on the model's own input
        self._other_size: dict[str, set] = {}
        self._perturbed: Counter = Counter()
        self._equivalent: Counter = Counter()
        self._unattached: dict[str, float] = {}
        self._foreign_calls = 0
        self._calls = 0

    # ---- the model's own forward --------------------------------------------------------------------
    def reference(self, handle: Any, text: Any) -> None:
        """Record the model's own call tree and embeddings: one plain forward of each tower on its own input,
        then the family's default score (a classifier's head runs there); the embeddings are what each
        side's ``Family.embedding_module`` output in it."""
        from faithclip.methods.context import Context

        self._recording_reference = True
        try:
            with self._hooks(), torch.no_grad():
                Context(
                    handle=handle,
                    side="image",
                    pixels=self.towers["image"].own_input,
                    text=text,
                    target=handle.family.default_target(),
                ).model_scores()
        finally:
            self._recording_reference = False
            self._reset_run()

    # ---- the method's run ---------------------------------------------------------------------------
    def __enter__(self) -> "Recorder":
        if self.towers["image"].own_embeds is None:
            raise RuntimeError("call Recorder.reference() before recording a method")
        self._reset_run()
        self._before = _state_snapshot(self.model, self.names)
        self._register()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._remove()
        self._after = _state_snapshot(self.model, self.names)

    @contextmanager
    def _hooks(self) -> Iterator[None]:
        self._register()
        try:
            yield
        finally:
            self._remove()

    def _register(self) -> None:
        try:
            self._handles.append(torch_module.register_module_forward_pre_hook(self._pre))
            self._handles.append(torch_module.register_module_forward_hook(self._post, always_call=True))
        except BaseException:
            self._remove()
            raise

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # ---- global hooks ------------------------------------------------------------------------------
    def _pre(self, module: torch.nn.Module, args: tuple) -> None:
        name = self.names.get(id(module))
        if name is None:
            self._foreign_calls += 1
            return
        parent = self._stack[-1] if self._stack else None
        if self._recording_reference:
            self.own_edges.add((name, parent))
        else:
            self._calls += 1
            if (name, parent) not in self.own_edges:
                self._outside[name] += 1
                self._pending_outside.add(name)
            self._check_state(module, name)
        side = self._by_input.get(id(module))
        if side is not None and args and isinstance(args[0], torch.Tensor):
            self._input_event(side, args[0])
        self._stack.append(name)

    def _post(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        name = self.names.get(id(module))
        if name is None:
            return
        while self._stack:  # pop up to this module (a forward that raised leaves no stale entries)
            if self._stack.pop() == name:
                break
        side = self._by_projection.get(id(module))
        if side is not None and self._recording_reference and isinstance(output, torch.Tensor):
            self.towers[side].own_embeds = output.detach()
        elif side is not None and isinstance(output, torch.Tensor):
            self._embedding_event(side, name, output)

    def _note(self, kind: str, where: str, detail: str, severity: str = "departure", category: str = "model") -> None:
        self._seen.setdefault((kind, where), Finding(kind, where, detail, severity, category))

    def _check_state(self, module: torch.nn.Module, name: str) -> None:
        before = self._before
        if module.training != before["training"][name]:
            self._note(
                "mode_flipped",
                name,
                f"ran in {'training' if module.training else 'eval'} mode; the model "
                f"is in {'training' if before['training'][name] else 'eval'} mode",
            )
        if (type(module).forward, module.__dict__.get("forward")) != before["forward"][name]:
            self._note("forward_swapped", name, "ran with its forward replaced")
        for kind in ("_parameters", "_buffers"):
            for key, tensor in getattr(module, kind).items():
                full = f"{name}.{key}" if name != "model" else key
                saved = before["tensors"].get(full)
                if saved is None or tensor is None:
                    continue
                if tensor is not saved[0]:
                    self._note("tensor_swapped", full, "ran with this tensor replaced by another object")
                elif tensor._version != saved[1] and not torch.equal(tensor.detach(), saved[2]):
                    self._note("weight_edited", full, "ran with this tensor's values edited in place")
        hooks = before["hooks"][name]
        for dictionary in ("_forward_hooks", "_forward_pre_hooks"):
            added = [h for key, h in getattr(module, dictionary).items() if key not in hooks[dictionary]]
            if added:
                self._hooks_during.setdefault(name, set()).update(_describe_hook(h) for h in added)

    def _input_event(self, side: str, inputs: torch.Tensor) -> None:
        tower = self.towers[side]
        own = tower.own_input
        matched: list[int | None] = []
        rows = inputs.detach()
        for row in rows:
            index = None
            if row.shape == own.shape[1:]:
                for candidate in range(own.shape[0]):
                    if torch.equal(row.to(own.dtype), own[candidate]):
                        index = candidate
                        break
            matched.append(index)
        other_size = side == "image" and tuple(rows.shape[-2:]) != tuple(own.shape[-2:])
        tower.current = _InputEvent(side, tuple(rows.shape), matched, other_size)

    def _embedding_event(self, side: str, name: str, output: torch.Tensor) -> None:
        tower = self.towers[side]
        own = tower.own_embeds.to(torch.float64)  # (n, E)
        rows = output.detach().to(torch.float64).reshape(-1, own.shape[-1])  # (N, E)
        distance = torch.cdist(rows, own) / own.norm(dim=-1).clamp_min(1e-12)  # (N, n)
        event = tower.current
        pending, self._pending_outside = self._pending_outside, set()
        per_row = event is not None and len(event.matched) == rows.shape[0]
        bad = False
        for i in range(rows.shape[0]):
            index = event.matched[i] if per_row else None
            if index is not None:
                if float(distance[i, index]) > self.tol:
                    self._own_mismatch[name] = max(self._own_mismatch.get(name, 0.0), float(distance[i, index]))
                    bad = True
                continue
            if float(distance[i].min()) <= self.tol:
                if event is not None and (not per_row or event.matched[i] is None):
                    self._equivalent[side] += 1
                continue
            bad = True
            if event is None:
                self._unattached[name] = max(self._unattached.get(name, 0.0), float(distance[i].min()))
            elif event.other_size:
                self._other_size.setdefault(side, set()).add(tuple(event.shape[-2:]))
            elif all(m is not None for m in event.matched):  # not one row per input: pooled or per-token
                self._own_mismatch[name] = max(self._own_mismatch.get(name, 0.0), float(distance[i].min()))
            else:
                self._perturbed[side] += 1
        (self._outside_departed if bad else self._outside_verified).update(pending)

    # ---- the report --------------------------------------------------------------------------------
    def findings(self) -> list[Finding]:
        """Everything seen, departures first (each names the module or tensor)."""
        before, after = self._before, self._after
        out = list(self._seen.values())
        seen = {(f.kind, f.where) for f in out}
        for full, (tensor, version, values, requires_grad) in before["tensors"].items():
            now = after["tensors"].get(full)
            if now is None:
                out.append(Finding("tensor_removed", full, "was removed from the model", "departure", "model"))
            elif now[0] is not tensor:
                out.append(
                    Finding("tensor_swapped_left", full, "left replaced by another object", "departure", "model")
                )
            elif not torch.equal(now[2], values):
                diff = float((now[2].double() - values.double()).abs().max())
                out.append(
                    Finding(
                        "weight_changed_left", full, f"left changed (max abs change {diff:.3g})", "departure", "model"
                    )
                )
            elif now[1] != version and ("weight_edited", full) not in seen:
                out.append(
                    Finding(
                        "weight_written",
                        full,
                        "written in place and restored; no module call saw it "
                        "changed (a computation outside the modules may have)",
                        "unverified",
                        "model",
                    )
                )
            if now is not None and now[3] != requires_grad:
                out.append(
                    Finding(
                        "requires_grad_left",
                        full,
                        f"requires_grad left {now[3]} (was {requires_grad})",
                        "note",
                        "model",
                    )
                )
        for name, dicts in before["hooks"].items():
            module_after = after["hooks"].get(name, {})
            for dictionary, hooks in dicts.items():
                left = [h for key, h in module_after.get(dictionary, {}).items() if key not in hooks]
                if left:
                    out.append(
                        Finding(
                            "hook_left",
                            name,
                            f"{dictionary[1:]} left attached: " + ", ".join(sorted(_describe_hook(h) for h in left)),
                            "departure",
                            "model",
                        )
                    )
        for dictionary, hooks in before["global"].items():
            left = [h for key, h in after["global"][dictionary].items() if key not in hooks]
            if left:
                out.append(
                    Finding(
                        "hook_left",
                        "torch (all modules)",
                        f"{dictionary[1:]} left registered: " + ", ".join(sorted(_describe_hook(h) for h in left)),
                        "departure",
                        "model",
                    )
                )
        for name, forward in before["forward"].items():
            if after["forward"].get(name) != forward:
                out.append(Finding("forward_replaced_left", name, "forward left replaced", "departure", "model"))
        for name, mode in before["training"].items():
            if after["training"].get(name) != mode:
                out.append(
                    Finding(
                        "mode_left",
                        name,
                        f"left in {'training' if after['training'][name] else 'eval'} mode",
                        "departure",
                        "model",
                    )
                )
        out += self._run_findings()
        order = {s: i for i, s in enumerate(SEVERITIES)}
        return sorted(out, key=lambda f: order[f.severity])

    def _run_findings(self) -> list[Finding]:
        """What the run did, in the report's order: departures of the embeddings, of the input size and of
        modules recomputed outside the model's forward, then the notes (hooks, other inputs, foreign modules)."""
        hooks = "; ".join(f"{m}: {', '.join(sorted(h))}" for m, h in sorted(self._hooks_during.items()))
        return [
            *self._embedding_findings(self._departure_causes(hooks)),
            *self._input_size_findings(),
            *self._recomputed_findings(),
            *self._hook_findings(hooks),
            *self._other_input_findings(),
            *self._foreign_findings(),
        ]

    def _departure_causes(self, hooks: str) -> list[str]:
        """What may have moved the embeddings away from the model's own, as far as the run shows."""
        causes = (
            f"modules called outside the model's forward: {', '.join(sorted(self._outside_departed))}"
            if self._outside_departed
            else "",
            f"hooks attached during the run: {hooks}" if hooks else "",
            "weights edited or forwards swapped (above)" if self._seen else "",
        )
        return [cause for cause in causes if cause]

    def _embedding_findings(self, causes: list[str]) -> list[Finding]:
        out = []
        for name, gap in sorted(self._own_mismatch.items()):
            out.append(
                Finding(
                    "embedding_not_the_models",
                    name,
                    f"embeddings computed from the model's own input "
                    f"are {gap:.3g} (relative L2) away from the model's own"
                    + (f"; {'; '.join(causes)}" if causes else ""),
                    "departure",
                    "model",
                )
            )
        for name, gap in sorted(self._unattached.items()):
            out.append(
                Finding(
                    "embedding_without_input",
                    name,
                    f"embeddings ({gap:.3g} away from the model's own) "
                    "computed without a pass through the model's input layer",
                    "departure",
                    "model",
                )
            )
        return out

    def _input_size_findings(self) -> list[Finding]:
        out = []
        for side, sizes in sorted(self._other_size.items()):
            own = tuple(self.towers[side].own_input.shape[-2:])
            shown = ", ".join(f"{h}x{w}" for h, w in sorted(sizes))
            out.append(
                Finding(
                    "input_size",
                    self.names[id(self.towers[side].input_module)],
                    f"explained inputs of {shown} px; the model predicts from {own[0]}x{own[1]} px",
                    "departure",
                    "input",
                )
            )
        return out

    def _recomputed_findings(self) -> list[Finding]:
        """Modules called outside their place in the model's forward: a departure when the embeddings they lead
        to are not the model's, unverified when no embedding followed, a note when they are the model's."""
        out = []
        if self._outside_departed:
            out.append(
                Finding(
                    "recomputed_outside",
                    ", ".join(sorted(self._outside_departed)),
                    "called outside their place in the model's own forward, leading to embeddings that "
                    "are not the model's",
                    "departure",
                    "model",
                )
            )
        unverified = set(self._outside) - self._outside_departed - self._outside_verified
        if unverified:
            out.append(
                Finding(
                    "recomputed_outside",
                    ", ".join(sorted(unverified)),
                    "called outside their place in "
                    "the model's own forward; no embedding followed, so the result could not be "
                    "compared with the model's",
                    "unverified",
                    "model",
                )
            )
        if self._outside_verified - self._outside_departed:
            out.append(
                Finding(
                    "recomputed_outside",
                    ", ".join(sorted(self._outside_verified - self._outside_departed)),
                    "called outside the model's forward; the embeddings they lead to ARE the model's "
                    f"(within {self.tol:g})",
                    "note",
                    "model",
                )
            )
        return out

    def _hook_findings(self, hooks: str) -> list[Finding]:
        if not hooks:
            return []
        return [
            Finding(
                "hooks_during_run",
                ", ".join(sorted(self._hooks_during)),
                f"hooks attached while the method ran (removed afterwards): {hooks}",
                "note",
                "model",
            )
        ]

    def _other_input_findings(self) -> list[Finding]:
        """Inputs other than the model's own: perturbations, and inputs that gave the model's own embeddings."""
        out = []
        for side, count in sorted(self._perturbed.items()):
            module = self.names[id(self.towers[side].input_module)]
            what = "images of the model's input size" if side == "image" else "texts"
            out.append(
                Finding(
                    "perturbed_inputs",
                    module,
                    f"queried the model on {count} {what} other than its own input (perturbations)",
                    "note",
                    "input",
                )
            )
        for side, count in sorted(self._equivalent.items()):
            module = self.names[id(self.towers[side].input_module)]
            out.append(
                Finding(
                    "equivalent_inputs",
                    module,
                    f"{count} other {side} inputs gave the model's own embeddings (e.g. padding)",
                    "note",
                    "input",
                )
            )
        return out

    def _foreign_findings(self) -> list[Finding]:
        if not (self._foreign_calls and not self._calls):
            return []
        return [
            Finding(
                "foreign_modules",
                "(not in the model)",
                f"{self._foreign_calls} calls of modules that are not the model's and none of the model's (a copy?)",
                "unverified",
                "model",
            )
        ]


__all__ = ["Recorder", "Finding", "SEVERITIES"]
