"""Small registries: names are the single source of truth for CLI choices; metadata lives with the entry."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

from faithclip.errors import MethodError

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


@dataclass(frozen=True)
class MethodSpec:
    """A registered explanation method.

    ``image`` / ``text`` compute raw maps for one side (``None`` where the side is not supported).
    ``modifies_model``: the explained forward is NOT the model's own (principle P1 fails by design).
    ``modifies_input``: the method scores perturbed or resized inputs rather than the model's input.
    ``families``: the model families (``faithclip.models.families``) the method is implemented and tested
    for; ``("*",)``: any family (e.g. a perturbation method that only calls the model's own score). A
    family adapter may also list the methods it was tested with (``Family.methods``): a method supports a
    family when either says so.
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
        from faithclip.models.families import FAMILIES, _load_families

        _load_families()
        declared = FAMILIES[family].methods if family in FAMILIES else ()
        return "*" in self.families or family in self.families or self.name in declared

    def family_names(self) -> list[str]:
        """The families this method supports (by its own declaration or the family's)."""
        from faithclip.models.families import FAMILIES, _load_families

        _load_families()
        return ["any"] if "*" in self.families else [name for name in FAMILIES if self.supports(name)]

    def check_family(self, family: str) -> None:
        """Raise ``MethodError`` naming the methods that do support ``family`` when this one does not."""
        if not self.supports(family):
            others = [spec.name for spec in METHODS if spec.supports(family)]
            raise MethodError(f"method {self.name!r} is not available for {family} models (it supports "
                              f"{', '.join(self.family_names())}); for {family}: {', '.join(others) or 'none'}.")


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
            specs = [loaded] if isinstance(loaded, MethodSpec) else list(loaded or []) if isinstance(loaded, (list, tuple)) else []
            for spec in specs:
                if not isinstance(spec, MethodSpec):
                    raise TypeError(f"it gave {type(spec).__name__}, not a faithclip.registry.MethodSpec")
                register_method(spec)
        except Exception as error:  # noqa: BLE001 -- reported, not swallowed: the plugin is named and skipped
            warnings.warn(f"faithclip plugin {key!r} (entry-point group {PLUGIN_GROUP}) was not loaded: {error}",
                          stacklevel=2)
            continue
        new = sorted(set(METHODS.names()) - before)
        PLUGIN_METHODS.update((name, key) for name in new)
        logger.debug("plugin %s registered %s", key, new)
        added += new
    return added
