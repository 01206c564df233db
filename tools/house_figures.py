"""The house's size figures (issue 24): files per folder of src/faithclip, the largest source files and functions
(lines), and the options of each ``faithclip`` command.

    python tools/house_figures.py               # the working tree
    python tools/house_figures.py --ref 17caf1d # the tree of a commit (read with git archive into a temporary folder)

Run from the repository root. Lines are a file's lines; a function's are from its ``def`` (decorators not
counted) to its last line, as ``ast`` gives them, docstring and comments included. A command's options are the
optional arguments of its parser (``-h`` not counted), read from the parsers of the measured tree (in a
subprocess that imports that tree's ``faithclip``); the deprecated spellings (the "deprecated spellings" group
of its ``--help``) are counted apart.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

PACKAGE = Path("src") / "faithclip"


def python_files(package: Path) -> list[Path]:
    return sorted(path for path in package.rglob("*.py") if "__pycache__" not in path.parts)


def files_per_folder(package: Path) -> Counter:
    return Counter(str(path.parent.relative_to(package.parent.parent)) for path in python_files(package))


def largest_files(package: Path, most: int) -> list[tuple[int, str]]:
    sizes = [
        (len(path.read_text().splitlines()), str(path.relative_to(package.parent.parent)))
        for path in python_files(package)
    ]
    return sorted(sizes, reverse=True)[:most]


def functions(package: Path) -> list[tuple[int, str]]:
    """(lines, ``file::Class.function``) of every function and method."""
    found = []
    for path in python_files(package):
        tree = ast.parse(path.read_text())
        stack = [(node, "") for node in tree.body]
        while stack:
            node, prefix = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{node.name}"
                if not isinstance(node, ast.ClassDef):
                    found.append(
                        (node.end_lineno - node.lineno + 1, f"{path.relative_to(package.parent.parent)}::{name}")
                    )
                stack += [(child, f"{name}.") for child in ast.iter_child_nodes(node)]
    return found


OPTIONS_CODE = """
import json
from faithclip.cli.main import SUBCOMMANDS, build_parser
parser = build_parser()
commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
counts = {}
for name, sub in commands.items():
    deprecated = {id(a) for g in sub._action_groups if "deprecated" in (g.title or "") for a in g._group_actions}
    options = [a for a in sub._actions if a.option_strings and "-h" not in a.option_strings]
    counts[name] = [sum(id(a) not in deprecated for a in options), sum(id(a) in deprecated for a in options)]
print(json.dumps(counts))
"""


def options_per_command(src: Path) -> dict[str, list[int]]:
    """``{command: [options, deprecated spellings]}`` from the parsers of the tree at ``src``."""
    done = subprocess.run(
        [sys.executable, "-c", OPTIONS_CODE],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src.resolve())},
        cwd=src.parent,
    )
    if done.returncode != 0:
        raise SystemExit(f"house_figures: cannot read the command parsers: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout)


def report(package: Path, most: int) -> list[str]:
    folders = files_per_folder(package)
    lines = [f"src/faithclip: {sum(folders.values())} Python files in {len(folders)} folders"]
    lines += [f"  {folder:<32} {count:>3}" for folder, count in sorted(folders.items())]
    lines.append(f"largest files (lines), the {most} largest:")
    lines += [f"  {size:>5}  {name}" for size, name in largest_files(package, most)]
    every = functions(package)
    lines.append(
        f"largest functions (lines), the {most} largest of {len(every)}; "
        f"{sum(size > 80 for size, _ in every)} longer than 80 lines, {sum(size > 60 for size, _ in every)} than 60:"
    )
    lines += [f"  {size:>5}  {name}" for size, name in sorted(every, reverse=True)[:most]]
    counts = options_per_command(package.parent)
    lines.append("options per command (faithclip CMD --help, -h not counted; + deprecated spellings):")
    lines += [f"  {name:<14} {now:>3}" + (f" + {old}" if old else "") for name, (now, old) in counts.items()]
    return lines


def tree_at(ref: str, folder: Path) -> Path:
    """``src/`` of commit ``ref``, written under ``folder``; its package path."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref, "src"], capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"house_figures: git archive {ref} failed: {archive.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder / PACKAGE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/house_figures.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", help="measure this commit's tree instead of the working tree")
    parser.add_argument("--most", type=int, default=5, help="how many of the largest files and functions to list")
    args = parser.parse_args(argv)
    if not PACKAGE.is_dir():
        print(f"house_figures: {PACKAGE} is not here: run from the repository root", file=sys.stderr)
        return 2
    if args.ref is None:
        print("\n".join(report(PACKAGE, args.most)))
        return 0
    with tempfile.TemporaryDirectory(prefix="house-figures-") as folder:
        print(f"(the tree of {args.ref})")
        print("\n".join(report(tree_at(args.ref, Path(folder)), args.most)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
