"""Deprecated names, kept for one release: ``warn_deprecated`` issues the ``DeprecationWarning`` at the
caller's line outside faithclip (the first frame neither in this package nor in the import machinery), so
that Python's default filter, which shows a ``DeprecationWarning`` raised in ``__main__``, shows it to a script
that uses an old name. ``deprecated_names`` makes a module's ``__getattr__`` for renamed classes,
``renamed_keyword`` reads a renamed keyword argument and ``renamed_fields`` keeps a dataclass field's old name as
a keyword of its constructor and an attribute (both the same value as the new name's)."""

from __future__ import annotations

import functools
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Any, Callable

_PACKAGE = str(Path(__file__).resolve().parent)


def _inside(frame: FrameType) -> bool:
    return str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE)


def _machinery(frame: FrameType) -> bool:
    return frame.f_code.co_filename.startswith("<frozen ")  # importlib: `from module import name`


def warn_deprecated(message: str, *, quiet_inside: bool = False) -> None:
    """Warn ``message`` (``DeprecationWarning``) at the first frame outside the faithclip package.

    ``quiet_inside``: say nothing when the code asking for the old name is faithclip's own (a module not yet
    moved to the new name); only a user's code is told."""
    level, frame = 1, sys._getframe(1)
    caller = frame.f_back
    while caller is not None and _machinery(caller):
        caller = caller.f_back
    if quiet_inside and caller is not None and _inside(caller):
        return
    while frame is not None and (_inside(frame) or _machinery(frame)):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, DeprecationWarning, stacklevel=level + 1)


def deprecated_names(module: str, renamed: dict[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``renamed`` (old name -> (new name, object)) with a warning."""

    def __getattr__(name: str) -> Any:
        if name in renamed:
            new, value = renamed[name]
            warn_deprecated(
                f"{module}.{name} is deprecated and will be removed in the next release; use {new} "
                "(the same class, named for every model family).",
                quiet_inside=True,
            )
            return value
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__


UNSET = object()  # a keyword the caller did not give


def renamed_keyword(owner: str, old: str, new: str, old_value: Any, new_value: Any = UNSET) -> Any:
    """The value given under the deprecated keyword ``old`` of ``owner`` (warned once, at the user's line), which
    stands for ``new``; both given with different values is a ``TypeError`` naming the one to keep."""
    warn_deprecated(f"{owner}'s {old}= is deprecated and will be removed in the next release; use {new}= (same value).")
    if new_value is not UNSET and new_value != old_value:
        raise TypeError(
            f"{owner}: {new}={new_value!r} and its deprecated name {old}={old_value!r} disagree; give {new}."
        )
    return old_value


class RenamedAttribute:
    """A deprecated attribute name reading and writing the attribute ``new`` (one warning per use)."""

    def __init__(self, owner: str, new: str) -> None:
        self.owner, self.new, self.old = owner, new, ""

    def __set_name__(self, cls: type, name: str) -> None:
        self.old = name

    def _warn(self) -> None:
        warn_deprecated(
            f"{self.owner}.{self.old} is deprecated and will be removed in the next release; use "
            f"{self.owner}.{self.new} (the same value)."
        )

    def __get__(self, instance: Any, cls: type | None = None) -> Any:
        if instance is None:
            return self
        self._warn()
        return getattr(instance, self.new)

    def __set__(self, instance: Any, value: Any) -> None:
        self._warn()
        setattr(instance, self.new, value)


def renamed_fields(renamed: dict[str, str]) -> Callable[[type], type]:
    """Class decorator (outside ``@dataclass``): each old field name of ``renamed`` (old -> new) stays a keyword of
    the constructor and an attribute for one release, with a ``DeprecationWarning`` at the user's line. The
    dataclass itself (its fields, ``replace``, ``to_dict``) knows the new names only."""

    def decorate(cls: type) -> type:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            for old, new in renamed.items():
                if old in kwargs:
                    kwargs[new] = renamed_keyword(cls.__name__, old, new, kwargs.pop(old), kwargs.get(new, UNSET))
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        for old, new in renamed.items():
            attribute = RenamedAttribute(cls.__name__, new)
            attribute.__set_name__(cls, old)
            setattr(cls, old, attribute)
        return cls

    return decorate


__all__ = ["RenamedAttribute", "deprecated_names", "renamed_fields", "renamed_keyword", "warn_deprecated"]
