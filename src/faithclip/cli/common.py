"""Arguments and checks shared by the subcommands."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from faithclip.errors import FaithclipError
from faithclip.registry import parse_dotted  # noqa: F401  (the commands' NAME.KEY=VALUE options read here)


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="shipped model name, transformers directory or hub id, or OpenAI/open_clip checkpoint file "
        "(default: the shipped shapes-clip)",
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="the tokenizer to use with --model (a transformers tokenizer directory or hub id), for a checkpoint "
        "file that holds none, e.g. OpenAI's ViT-B-32.pt with openai/clip-vit-base-patch32's tokenizer",
    )


def add_out_argument(
    parser: argparse.ArgumentParser, command: str, *, required: bool = False, holds: str = "", optional: bool = False
) -> None:
    """The one output convention: ``--out DIR`` holds the command's JSON record and a self-contained
    ``report.html`` (``faithclip.report.page.write_report``), plus whatever else the command writes."""
    contents = f"{command}.json, report.html" + (f", {holds}" if holds else "")
    if optional:  # a command whose result is its terminal table; the report is written when asked for
        parser.add_argument("--out", metavar="DIR", default=None, help=f"also write {contents} to this directory")
        return
    parser.add_argument(
        "--out",
        metavar="DIR",
        required=required,
        default=None if required else f"faithclip-{command}",
        help=f"output directory ({contents})" + ("" if required else " (default: ./%(default)s)"),
    )


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
    from faithclip.files import (
        REFUSED_KINDS,
        WRITTEN_THROUGH,
        OutputError,
        hold_output,
        output_kind,
        refusal,
    )

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
            raise FaithclipError(
                f"{option} {target} is a symlink to nothing (a loop or a missing target), not a "
                f"directory; choose another {option}."
            )
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
        raise FaithclipError(
            f"cannot create output directory {directory}: {error.strerror}. Choose another {option}."
        ) from error
    return directory


def _pillow_default_max_pixels() -> int | None:
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


# Pillow's own limit, read once when the command line is first built (``main`` sets Pillow's limit per command)
PILLOW_MAX_PIXELS = _pillow_default_max_pixels()


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels``, the same on every command that reads image files (``main`` applies it)."""
    parser.add_argument(
        "--max-pixels",
        type=non_negative_int,
        default=PILLOW_MAX_PIXELS,
        metavar="N",
        help="refuse images of more than N pixels, a guard against decompression bombs; 0: no "
        "limit (default: Pillow's, %(default)s, about 9,500 x 9,500)",
    )


def add_run_arguments(
    parser: argparse.ArgumentParser,
    *,
    threads: int | None = None,
    threads_default: str = "torch's choice",
    progress: bool = True,
) -> None:
    """``--device``, ``--dtype``, ``--threads`` and ``--no-progress``: the one group every command that runs a
    model takes (``main`` applies ``--threads`` for the command's duration and restores torch's count after).
    ``threads``: a command's own default where a documented reason exists (``threads_default`` says it and
    why); else torch's choice. ``progress=False`` for a command that prints no progress."""
    group = parser.add_argument_group("running the model")
    group.add_argument(
        "--device",
        default="cpu",
        metavar="DEVICE",
        help="where the model runs: cpu, cuda, cuda:N or mps (default: %(default)s)",
    )
    group.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float16", "bfloat16"),
        help="the model's precision; scores and sums are taken in float32 either way (default: %(default)s)",
    )
    group.add_argument(
        "--threads",
        type=positive_int,
        default=threads,
        metavar="N",
        help=f"torch CPU threads (default: {threads_default})",
    )
    if progress:
        group.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, torch's count restored after (``None``: unchanged)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def progress_printer(args: argparse.Namespace, stream: str = "stdout") -> Callable[[str], None]:
    """A progress callback that prints a line (flushed) on ``stream``, or nothing under ``--no-progress``."""
    if getattr(args, "no_progress", False):
        return lambda line: None
    return lambda line: print(line, flush=True, file=sys.stderr if stream == "stderr" else sys.stdout)


def load_model(name: str | None, args: argparse.Namespace | None = None) -> Any:
    """``faithclip.load`` for the command line, on ``args.device`` in ``args.dtype`` when given: no
    progress bar (the weights of a CLIP load in seconds, and the bar would be the only non-result line
    on stderr)."""
    import transformers

    from faithclip.models.loading import load

    transformers.utils.logging.disable_progress_bar()
    return load(
        name,
        tokenizer=getattr(args, "tokenizer", None),
        device=getattr(args, "device", None),
        dtype=getattr(args, "dtype", None) or "float32",
    )


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


# ---- one grammar: lists, method options, deprecated spellings ---------------------------------------------


def names(text: str) -> list[str]:
    """``"a, b,c"`` -> ``["a", "b", "c"]``: the one list syntax (a comma list, one argument)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def note_deprecated(namespace: argparse.Namespace, notice: str) -> None:
    """Leave a one-line notice for ``main`` to print on stderr once the command line is parsed."""
    namespace.deprecations = [*(getattr(namespace, "deprecations", None) or []), notice]


def once(
    parser: argparse.ArgumentParser,
    namespace: argparse.Namespace,
    dest: str,
    option_string: str,
    given: list[str],
    spelling: str | None = None,
) -> None:
    """A list option given twice (under any of its spellings) is refused, never reduced to its last value;
    the message spells the one comma list meant under ``spelling``, the option's current name (an old
    spelling's alias passes the new one: ``--methods a --method b`` suggests ``--methods a,b``)."""
    spelling = spelling or option_string
    seen = namespace.__dict__.setdefault("lists_given", set())
    if dest in seen:
        meant = ",".join(str(v) for v in [*(getattr(namespace, dest) or []), *given])
        parser.error(f"{option_string} was given twice; give one comma list: {spelling} {meant}")
    seen.add(dest)


class CommaList(argparse.Action):
    """``--methods a,b``: a list (``names``). With ``nargs="+"`` the old space-separated spelling
    ``--methods a b`` still parses, with a deprecation notice (it goes in the next release). ``item``
    converts each element (``float`` for a list of numbers)."""

    def __init__(self, option_strings, dest, *, item: Callable[[str], Any] = str, **kwargs) -> None:
        self.item = item
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        given = values if isinstance(values, list) else [values]
        listed = [name for text in given for name in names(text)]
        once(parser, namespace, self.dest, option_string, listed)
        if len(given) > 1:
            note_deprecated(
                namespace,
                f"{option_string} {' '.join(given)}: a space-separated list is deprecated "
                f"and goes in the next release; write {option_string} {','.join(given)}",
            )
        try:
            setattr(namespace, self.dest, [self.item(name) for name in listed])
        except ValueError:
            parser.error(
                f"argument {option_string}: {','.join(listed)!r} is not a comma list of "
                f"{getattr(self.item, '__name__', 'value')} values"
            )


class DeprecatedAlias(argparse.Action):
    """An old option name kept for one release: it sets what its new spelling sets (``dest``; the given
    value, or ``const`` for a flag) and leaves a one-line notice naming the new spelling."""

    def __init__(self, option_strings, dest, *, use: str, **kwargs) -> None:
        self.use = use
        kwargs.setdefault("help", f"deprecated, goes in the next release: use {use}")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if isinstance(values, list):
            once(parser, namespace, self.dest, option_string, values, spelling=self.use.split()[0])
        note_deprecated(namespace, f"{option_string} is deprecated and goes in the next release; use {self.use}")
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


class DeprecatedPositional(argparse.Action):
    """Positional values of an old spelling (``faithclip check a b``) kept for one release, with a notice."""

    def __init__(self, option_strings, dest, *, use: str, **kwargs) -> None:
        self.use = use
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if values:
            note_deprecated(
                namespace,
                f"{self.metavar} as positional arguments is deprecated and goes in the next release; use {self.use}",
            )
        setattr(namespace, self.dest, [name for item in values or [] for name in names(item)])


def deprecated_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    return parser.add_argument_group("deprecated spellings (each prints a notice; they go in the next release)")


def add_random_weights_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """``--random-weights``: the one name for building the model with random weights, its architecture (a
    ``config.json``) from ``--model DIR``, else ``default``."""
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="build the model with random weights (no weights needed): the architecture of --model "
        f"DIR's config.json, else {default}",
    )


def add_method_options_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--method-option METHOD.KEY=VALUE``, the same on every command that runs methods."""
    parser.add_argument(
        "--method-option",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help=help
        or "a method option, e.g. rise.masks=1000 or grad_eclip.layers=2 (repeatable; values "
        "read as JSON when they parse; recorded with the results)",
    )


def method_options(
    args: argparse.Namespace, methods: list[str], model: Any = None, side: str = "image"
) -> dict[str, dict[str, Any]]:
    """``--method-option`` parsed and checked against the methods of the run (``registry.check_method_options``:
    unknown keys, wrong types, out-of-range values and, with ``model``, ``layers`` beyond its tower), in one
    line before any work. Options for a method not run are refused, as ``evaluate`` refuses them."""
    from faithclip.errors import MethodError
    from faithclip.registry import check_method_options

    options = parse_dotted(getattr(args, "method_option", None) or [], "--method-option", MethodError)
    layers = None
    if model is not None and options:
        from faithclip.api import tower_layers

        layers = tower_layers(model, side)
    check_method_options(options, methods, side, layers)
    return options
