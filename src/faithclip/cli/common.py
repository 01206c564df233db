"""Arguments and checks shared by the subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from faithclip.errors import FaithclipError


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None,
        help="shipped model name, transformers directory or hub id, or OpenAI/open_clip checkpoint file "
             "(default: the shipped shapes-clip)",
    )


def output_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check it is writable, before any work is done."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FaithclipError(f"cannot create output directory {directory}: {error.strerror}. Choose another --out.") from error
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise FaithclipError(f"output directory {directory} is not writable. Choose another --out.")
    return directory


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a text."""
    cleaned = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in cleaned:
        cleaned = cleaned.replace("--", "-")
    return cleaned[:limit] or "text"
