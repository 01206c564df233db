"""Errors faithclip raises for bad input. Each message says what to do next."""

from __future__ import annotations


class FaithclipError(ValueError):
    """Base class of faithclip's input errors (a ``ValueError``, so callers may catch either).

    The CLI prints these as one line without a traceback and exits with status 2.
    """


class ImageError(FaithclipError):
    """An image could not be read or converted."""


class TextError(FaithclipError):
    """A text could not be tokenised or is empty."""


class ModelError(FaithclipError):
    """A model could not be loaded or does not have what a method needs."""


class ProbeError(FaithclipError):
    """The probe could not capture what was asked (no such layer, attention not materialised)."""


class MethodError(FaithclipError):
    """Unknown method or invalid options."""
