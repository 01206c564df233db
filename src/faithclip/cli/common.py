"""Arguments and checks shared by the subcommands."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from faithclip.errors import FaithclipError


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None,
        help="shipped model name, transformers directory or hub id, or OpenAI/open_clip checkpoint file "
             "(default: the shipped shapes-clip)",
    )
    parser.add_argument(
        "--tokenizer", default=None, metavar="DIR",
        help="the tokenizer to use with --model (a transformers tokenizer directory or hub id), for a checkpoint "
             "file that holds none, e.g. OpenAI's ViT-B-32.pt with openai/clip-vit-base-patch32's tokenizer",
    )


def add_out_argument(parser: argparse.ArgumentParser, command: str, *, required: bool = False,
                     holds: str = "", optional: bool = False) -> None:
    """The one output convention: ``--out DIR`` holds the command's JSON record and a self-contained
    ``report.html`` (``faithclip.report.page.write_report``), plus whatever else the command writes."""
    contents = f"{command}.json, report.html" + (f", {holds}" if holds else "")
    if optional:  # a command whose result is its terminal table; the report is written when asked for
        parser.add_argument("--out", metavar="DIR", default=None, help=f"also write {contents} to this directory")
        return
    parser.add_argument("--out", metavar="DIR", required=required, default=None if required else f"faithclip-{command}",
                        help=f"output directory ({contents})" + ("" if required else " (default: ./%(default)s)"))


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1 (argparse turns the ValueError into a one-line usage error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """``argparse`` type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, got {text}")
    return value


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number > 0."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def check_writable(path: str | Path, kind: Literal["dir", "file"] = "dir", option: str = "--out") -> Path:
    """Fail now, before any computation, if ``path`` could not be written later; create nothing.

    ``kind="dir"``: ``path`` is an output directory (it may not exist yet: it is created when the first
    file is written). ``kind="file"``: ``path`` is an output file: a regular file is replaced atomically;
    ``-`` (standard output), a FIFO, a character device or a symlink to one is written into, never
    replaced; a directory, block device or socket is refused (``faithclip.files.output_kind``). The check
    writes and removes a probe file in the directory that will hold the output (or in its nearest
    existing ancestor), because permission bits do not tell (root ignores them; a read-only file system
    does not show in them). Raises ``FaithclipError`` naming ``option``.
    """
    from faithclip.files import REFUSED_KINDS, WRITTEN_THROUGH, OutputError, hold_output, output_kind, refusal

    if kind == "file" and str(path) == "-":
        return Path("-")
    target = Path(path).expanduser()
    if kind == "file":
        try:
            what = output_kind(target)
        except OutputError as error:
            raise FaithclipError(f"{option}: {error}") from error
        if what in REFUSED_KINDS:
            raise FaithclipError(f"{option} {refusal(target, what)}")
        if what in WRITTEN_THROUGH:
            if not os.access(target, os.W_OK):
                raise FaithclipError(f"cannot write {target}: permission denied. Choose another {option}.")
            try:
                hold_output(target)  # a FIFO nobody reads is refused now, not after the work
            except OutputError as error:
                raise FaithclipError(f"{option}: {error}") from error
            return target
        if not target.name:
            raise FaithclipError(f"{option} {path!r} is not a file name.")
        directory = Path(os.path.realpath(target)).parent
    else:
        if target.is_symlink() and not target.exists():  # a dangling link or a loop: no directory can be made there
            raise FaithclipError(f"{option} {target} is a symlink to nothing (a loop or a missing target), not a "
                                 f"directory; choose another {option}.")
        if target.exists() and not target.is_dir():
            raise FaithclipError(f"{option} {target} is a file, not a directory; choose another {option}.")
        directory = target
    existing = directory.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FaithclipError(f"cannot write {target}: {existing} is a file, not a directory. Choose another {option}.")
    try:
        tempfile.TemporaryFile(prefix=".faithclip-probe-", dir=existing).close()
    except OSError as error:
        raise FaithclipError(
            f"cannot write {target}: no file can be created in {existing} ({error.strerror or error}). "
            f"Choose another {option}."
        ) from error
    return target


def output_dir(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` if needed, after checking it can be written (``check_writable``)."""
    directory = check_writable(path, "dir", option)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FaithclipError(f"cannot create output directory {directory}: {error.strerror}. Choose another {option}.") from error
    return directory


def _pillow_default_max_pixels() -> int | None:
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


# Pillow's own limit, read once when the command line is first built (``main`` sets Pillow's limit per command)
PILLOW_MAX_PIXELS = _pillow_default_max_pixels()


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels``, the same on every command that reads image files (``main`` applies it)."""
    parser.add_argument("--max-pixels", type=non_negative_int, default=PILLOW_MAX_PIXELS, metavar="N",
                        help="refuse images of more than N pixels, a guard against decompression bombs; 0: no "
                             "limit (default: Pillow's, %(default)s, about 9,500 x 9,500)")


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--dtype``, the same on every command that runs a model."""
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="where the model runs: cpu, cuda, cuda:N or mps (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                        help="the model's precision; scores and sums are taken in float32 either way "
                             "(default: %(default)s)")


def load_model(name: str | None, args: argparse.Namespace | None = None) -> Any:
    """``faithclip.load`` for the command line, on ``args.device`` in ``args.dtype`` when given: no
    progress bar (the weights of a CLIP load in seconds, and the bar would be the only non-result line
    on stderr)."""
    import transformers

    from faithclip.models.loading import load

    transformers.utils.logging.disable_progress_bar()
    return load(name, tokenizer=getattr(args, "tokenizer", None), device=getattr(args, "device", None),
                dtype=getattr(args, "dtype", None) or "float32")


def place_model(handle: Any, args: argparse.Namespace) -> Any:
    """A model the command built itself (random weights), moved to ``args.device`` / ``args.dtype``."""
    from faithclip.models.loading import place

    return place(handle, getattr(args, "device", None), getattr(args, "dtype", None))


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a text."""
    cleaned = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    while "--" in cleaned:
        cleaned = cleaned.replace("--", "-")
    return cleaned[:limit] or "text"
