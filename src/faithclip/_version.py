"""The package version, in one leaf module that imports nothing: every module reads it from here, so none
imports the package root (which re-exports the public API) from below."""

__version__ = "0.1.0"
