"""Small registries: names are the single source of truth for CLI choices; metadata lives with the entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from faithclip.errors import MethodError

T = TypeVar("T")


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
    """

    name: str
    paper: str
    image: Callable[..., Any] | None = None
    text: Callable[..., Any] | None = None
    modifies_model: bool = False
    modifies_input: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(side for side in ("image", "text") if getattr(self, side) is not None)


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    return METHODS.add(spec.name, spec)
