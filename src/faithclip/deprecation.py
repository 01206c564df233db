"""Deprecated names, kept for one release: ``warn_deprecated`` issues the ``DeprecationWarning`` at the
caller's line outside faithclip (the first frame not in this package), so that Python's default filter, which
shows a ``DeprecationWarning`` raised in ``__main__``, shows it to a script that uses an old name."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent)


def warn_deprecated(message: str) -> None:
    """Warn ``message`` (``DeprecationWarning``) at the first frame outside the faithclip package."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, DeprecationWarning, stacklevel=level + 1)


__all__ = ["warn_deprecated"]
