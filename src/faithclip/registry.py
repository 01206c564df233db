"""Small registries: names are the single source of truth for CLI choices; metadata lives with the entry."""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, Mapping, Sequence, TypeVar

from faithclip.errors import FaithclipError, MethodError

T = TypeVar("T")
logger = logging.getLogger(__name__)
PLUGIN_GROUP = "faithclip.methods"  # entry-point group through which other packages register methods


class Registry(Generic[T]):
    """Name -> entry, with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise MethodError(f"unknown {self.kind} {name!r}; choose from: {', '.join(self.names())}.") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        return iter(self._entries[name] for name in self.names())


#: the refusal reason of a method that does not say whether its formula holds for a score reading every image token
UNDECLARED_POOLED = "it does not declare that its formula holds for a score that reads every image token"


@dataclass(frozen=True)
class MethodSpec:
    """A registered explanation method.

    ``image`` / ``text`` compute raw maps for one side (``None`` where the side is not supported).
    ``modifies_model``: the explained forward is NOT the model's own (principle P1 fails by design).
    ``modifies_input``: the method scores perturbed or resized inputs rather than the model's input.
    ``families``: the model families (``faithclip.models.families``) the method runs on, the one declaration
    of support (``faithclip methods --table`` is generated from it); ``("*",)``: every registered family,
    for a method that reads the model only through the family adapter (so a new family needs no method
    edit). ``family_sides`` narrows it by what a family declares (a published pipeline it has or lacks).
    ``assumes_pooled_score``: why the method's formula holds only for a score that reads the image through its
    pooled token alone (in words, for the refusal), or ``None`` when any scalar of the image will do. A target
    that reads every image token (BLIP's ITM, ``Target.pooled`` False) is refused by such a method
    (``check_target``). A method that does not declare it is refused too (``UNDECLARED_POOLED``).
    ``slow``: the method runs hundreds of forwards per map (perturbed inputs, or an optimised bottleneck),
    seconds each: ``faithclip explain`` says so before each image, and the P2 ladder leaves it out of its
    default methods (``faithclip.audit.ladder.default_methods``).
    """

    name: str
    paper: str
    image: Callable[..., Any] | None = None
    text: Callable[..., Any] | None = None
    modifies_model: bool = False
    modifies_input: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    families: tuple[str, ...] = ("clip",)
    #: the sides the method has on a family's models, when that depends on the family (``None``: every side
    #: of the method that the family has), e.g. a published pipeline with no text side for some family
    family_sides: Callable[[Any], tuple[str, ...]] | None = None
    assumes_pooled_score: str | None = UNDECLARED_POOLED
    slow: bool = False

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(side for side in ("image", "text") if getattr(self, side) is not None)

    def sides_on(self, family: Any) -> tuple[str, ...]:
        """The sides this method explains on models of ``family`` (a ``Family``); empty when unsupported."""
        if not self.supports(family.name):
            return ()
        sides = tuple(side for side in self.sides if family.has_side(side))
        return sides if self.family_sides is None else tuple(s for s in sides if s in self.family_sides(family))

    def supports(self, family: str) -> bool:
        """Whether the method runs on models of the registered family named ``family``."""
        from faithclip.models.families import FAMILIES, _load_families

        _load_families()
        if family not in FAMILIES or ("*" not in self.families and family not in self.families):
            return False
        return self.family_sides is None or bool(self.family_sides(FAMILIES[family]))

    def family_names(self) -> list[str]:
        """The families this method supports."""
        from faithclip.models.families import FAMILIES, _load_families

        _load_families()
        return [name for name in FAMILIES if self.supports(name)]

    def check_options(
        self,
        side: str,
        options: Mapping[str, Any],
        *,
        spelled: Callable[[str], str] = lambda key: key,
        layers: int | None = None,
    ) -> None:
        """``check_options`` for this method's ``side``: unknown options and bad values refused, in one line."""
        function = getattr(self, side)
        if function is not None:
            check_options(self.name, [function], options, spelled=spelled, layers=layers)

    def check_family(self, family: str) -> None:
        """Raise ``MethodError`` naming the methods that do support ``family`` when this one does not."""
        if not self.supports(family):
            others = [spec.name for spec in METHODS if spec.supports(family)]
            raise MethodError(
                f"method {self.name!r} is not available for {family} models (it supports "
                f"{', '.join(self.family_names())}); for {family}: {', '.join(others) or 'none'}."
            )

    def check_target(self, target: Any, side: str, family: str | None = None) -> None:
        """Refuse, in one line, a ``target`` (``faithclip.targets.Target``) this method's formula does not
        explain: a score that reads every image token (BLIP's ITM) when the method assumes the pooled path, and
        such a score on the text side (its text forward runs once per image-text pair, not once per text)."""
        if target.pooled:
            return
        if side != "image":
            raise MethodError(
                f"the {target.kind} target is explained on the image side only: BLIP's text encoder "
                "cross-attends to the image for it, so the text tower runs once per (image, text) pair, "
                "not once per text as the text-side methods read it."
            )
        if self.assumes_pooled_score is not None:
            able = [
                spec.name
                for spec in METHODS
                if spec.assumes_pooled_score is None
                and spec.image is not None
                and (family is None or spec.supports(family))
            ]
            raise MethodError(
                f"{self.name} cannot explain the {target.kind} target: {self.assumes_pooled_score}; "
                f"BLIP's ITM head cross-attends to every image token. Methods that explain "
                f"{target.kind}: {', '.join(able) or 'none'}."
            )


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    return METHODS.add(spec.name, spec)


_loaded_plugins: set[str] = set()  # entry points already loaded (by "name = value"), so loading is idempotent
PLUGIN_METHODS: dict[str, str] = {}  # method name -> the entry point ("name = value") that registered it


def load_plugins() -> list[str]:
    """Register the methods other packages declare in the ``faithclip.methods`` entry-point group.

    An entry point may name a ``MethodSpec``, a list of them, or a function of no arguments returning
    either (see docs/plugins.md); a module whose import calls ``register_method`` itself may also be named.
    A plugin that fails to load, or that reuses a registered name, is skipped with a warning naming it:
    another package's bug must not break faithclip. Returns the names registered by this call.
    """
    added = []
    for entry in metadata.entry_points(group=PLUGIN_GROUP):
        key = f"{entry.name} = {entry.value}"
        if key in _loaded_plugins:
            continue
        _loaded_plugins.add(key)
        before = set(METHODS.names())
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, MethodSpec):
                loaded = loaded()
            specs = (
                [loaded]
                if isinstance(loaded, MethodSpec)
                else list(loaded or [])
                if isinstance(loaded, (list, tuple))
                else []
            )
            for spec in specs:
                if not isinstance(spec, MethodSpec):
                    raise TypeError(f"it gave {type(spec).__name__}, not a faithclip.registry.MethodSpec")
                register_method(spec)
        except Exception as error:  # noqa: BLE001 -- reported, not swallowed: the plugin is named and skipped
            warnings.warn(
                f"faithclip plugin {key!r} (entry-point group {PLUGIN_GROUP}) was not loaded: {error}", stacklevel=2
            )
            continue
        new = sorted(set(METHODS.names()) - before)
        PLUGIN_METHODS.update((name, key) for name in new)
        logger.debug("plugin %s registered %s", key, new)
        added += new
    return added


# ---- options ----------------------------------------------------------------------------------------
# One name per concept: an option word means the same thing in every method and metric that takes it, so
# its range is stated once, here. (The type comes from the function's own annotation.)
_COUNT = ("a whole number of at least 1", lambda value: value >= 1)
OPTION_RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    **dict.fromkeys(
        ("layers", "masks", "cells", "steps", "samples", "batch_size", "window", "stride", "every", "klen", "step"),
        _COUNT,
    ),
    "tolerance": ("a distance in pixels of at least 0", lambda value: value >= 0),
    "sigma": ("a positive number", lambda value: value > 0),
    "variance": ("a positive number", lambda value: value > 0),
    "lr": ("a positive number", lambda value: value > 0),
    "beta": ("a number of at least 0", lambda value: value >= 0),
    "prob": ("a probability above 0 and at most 1", lambda value: 0 < value <= 1),
}
# options that take one word of a fixed set, by option name (the methods hold the same tuples; a test checks that
# they agree): checked before any work, like the ranges above
OPTION_CHOICES: dict[str, tuple[str, ...]] = {
    "relu": ("per_layer", "after_sum", "none"),
    "lambda_span": ("context", "inner"),
    "lambda_qk": ("raw", "out_proj"),
    "qk": ("raw", "out_proj"),  # grad_eclip_official's deprecated name of lambda_qk (removed in the next release)
    "pooling": ("mean", "tokens"),
    "residual": ("normalized", "input"),
    "redundant": ("auto", "empty", "set"),
}
# options whose values bound each other, by option names: (names, the rule in words, the test on their values);
# a name the caller did not give takes the function's default
OPTION_RELATIONS: list[tuple[tuple[str, ...], str, Callable[..., bool]]] = [
    (
        ("steps", "every"),
        "every must be at most steps (a curve scored every `every` of `steps` steps)",
        lambda steps, every: every <= steps,
    ),
]
# One meaning per layer option name: ``layers`` is a COUNT of last layers (grad_eclip, attention_eclip,
# grad_eclip_official, clip_surgery); ``layer`` the INDEX of the one layer a method reads (grad_cam,
# self_attention, m2ib); ``start_layer`` the INDEX of the first layer of a range that runs to the last (rollout,
# game, legrad). Indices are checked against the model's layer count when it is known.
LAYER_INDEX_OPTIONS = ("layer", "start_layer")
LAYER_OPTION_MEANINGS = {
    "layers": "a count of last layers",
    "layer": "the index of one layer",
    "start_layer": "the index of the first of the layers up to the last",
}
# parameters a caller passes, not the user (the official pipeline's original image)
INTERNAL_PARAMETERS = frozenset({"original"})

_TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a word", "None": "null"}


def option_parameters(*functions: Callable[..., Any]) -> dict[str, inspect.Parameter] | None:
    """The keyword options ``functions`` take (every parameter after the first, ``ctx`` or ``case``),
    merged; ``None`` when one of them takes any keyword (``**options``: it says nothing about its names)."""
    found: dict[str, inspect.Parameter] = {}
    for function in functions:
        parameters = list(inspect.signature(function).parameters.values())[1:]
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        found.update((p.name, p) for p in parameters if p.name not in INTERNAL_PARAMETERS)
    return found


def check_options(
    owner: str,
    functions: Sequence[Callable[..., Any]],
    options: Mapping[str, Any],
    *,
    spelled: Callable[[str], str] = lambda key: key,
    layers: int | None = None,
    error: type[Exception] = MethodError,
) -> None:
    """Refuse, before any work, an option ``owner`` (a method or metric) does not take, naming the ones it
    does, and a value of the wrong type (from the function's annotation), not finite, or out of its range
    (``OPTION_RANGES``; ``layers`` and layer indices against the ``layers`` of the model's tower when
    given). ``spelled(key)`` is how the user wrote the option (``--layers``, ``grad_eclip.layers``)."""
    parameters = option_parameters(*functions)
    if parameters is None:
        return
    for key, value in options.items():
        if key not in parameters:
            names = ", ".join(parameters) if parameters else None
            raise error(
                f"{spelled(key)} is not an option of {owner}; "
                + (f"its options are {names}{_layer_hint(key, parameters)}." if names else f"{owner} takes no options.")
            )
        problem = value_problem(parameters[key], value, layers)
        if problem:
            given = spelled(key) + (" " if spelled(key).startswith("--") else "=") + _shown(value)
            raise error(f"{given}: {owner}'s {key} must be {problem}.")
    for names, words, holds in OPTION_RELATIONS:
        if not any(name in options for name in names) or not all(name in parameters for name in names):
            continue
        values = [options.get(name, parameters[name].default) for name in names]
        if any(value is inspect.Parameter.empty for value in values) or holds(*values):
            continue
        given = ", ".join(f"{spelled(name)}={_shown(value)}" for name, value in zip(names, values))
        raise error(f"{given}: {owner}'s {words}.")


def _layer_hint(key: str, parameters: Mapping[str, Any]) -> str:
    """For a layer option given to a method that takes another one: what each of the two means."""
    if key not in LAYER_OPTION_MEANINGS:
        return ""
    other = next((name for name in LAYER_OPTION_MEANINGS if name != key and name in parameters), None)
    return "" if other is None else f" ({key}: {LAYER_OPTION_MEANINGS[key]}; {other}: {LAYER_OPTION_MEANINGS[other]})"


def value_problem(parameter: inspect.Parameter, value: Any, layers: int | None = None) -> str | None:
    """What is wrong with ``value`` for ``parameter`` (``None``: nothing)."""
    choices = OPTION_CHOICES.get(parameter.name)
    if choices is not None and value is not None and value not in choices:
        return "one of " + ", ".join(choices)
    annotation = parameter.annotation
    if isinstance(annotation, type):
        annotation = annotation.__name__
    kinds = [part.strip().strip("'\"") for part in annotation.split("|")] if isinstance(annotation, str) else []
    known = [kind for kind in kinds if kind in _TYPE_WORDS]
    if known and len(known) == len(kinds) and not any(_is_kind(value, kind) for kind in known):
        return " or ".join(_TYPE_WORDS[kind] for kind in known)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if not math.isfinite(value):
        return "a finite number"
    name = parameter.name
    if name in OPTION_RANGES:
        words, accepts = OPTION_RANGES[name]
        if not accepts(value):
            return words
    if layers is not None and name == "layers" and value > layers:
        return f"at most {layers}, the layers of the model's tower"
    if layers is not None and name in LAYER_INDEX_OPTIONS and not -layers <= value < layers:
        return f"a layer index from {-layers} to {layers - 1} (the model's tower has {layers} layers)"
    return None


def _is_kind(value: Any, kind: str) -> bool:
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":  # numpy's integers too
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, str)


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_dotted(items: Sequence[str], flag: str, error: type[Exception] = FaithclipError) -> dict[str, dict[str, Any]]:
    """``["rise.masks=64"]`` -> ``{"rise": {"masks": 64}}`` (a value is read as JSON when it parses, else
    kept as text); anything else is refused in one line naming ``flag``."""
    import json

    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, equals, raw = item.partition("=")
        owner, dot, name = key.partition(".")
        if not equals or not dot or not owner or not name:
            raise error(f"{flag} {item!r} must look like NAME.KEY=VALUE, e.g. pointing_game.tolerance=4.")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        options.setdefault(owner, {})[name] = value
    return options


def check_method_options(
    options: Mapping[str, Mapping[str, Any]],
    run: Sequence[str],
    side: str = "image",
    layers: int | None = None,
    among: str = "",
) -> None:
    """``--method-option`` values checked before any work, in one line each: options for a method not in
    ``run`` (``among`` says which methods a command runs, when it is not all of them), and unknown keys,
    wrong types, out-of-range values and ``layers`` beyond the tower (``MethodSpec.check_options``)."""
    for method, given in options.items():
        if method not in run:
            raise MethodError(
                f"--method-option {method}.*: options given for method {method!r}, which is not among the "
                f"methods run ({among}{', '.join(run)})."
            )
        METHODS.get(method).check_options(side, given, spelled=lambda key, m=method: f"{m}.{key}", layers=layers)
