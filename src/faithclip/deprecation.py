"""Deprecated names, kept for one release: ``warn_deprecated`` issues the ``DeprecationWarning`` at the
caller's line outside faithclip (the first frame neither in this package nor in the import machinery), so
that Python's default filter, which shows a ``DeprecationWarning`` raised in ``__main__``, shows it to a script
that uses an old name. ``deprecated_names`` makes a module's ``__getattr__`` for renamed classes."""

from __future__ import annotations

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


__all__ = ["deprecated_names", "warn_deprecated"]
