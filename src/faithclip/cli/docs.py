"""Every documented figure, checked against the command that prints it.

    python -m faithclip.cli.docs --check [FILES...] [--reduced] [--slow]   # exit 1 naming each figure that disagrees
    python -m faithclip.cli.docs --replicate [FILES...] [--reduced]        # rerun with fresh seeds, compare intervals
    python -m faithclip.cli.docs --list [FILES...]                         # every documented command, doc:line
    python -m faithclip.cli.docs [FILES...] [--reduced]                    # rewrite the results blocks

FILES default to the pages that state figures (README.md and docs/{audit,families,plugins,evaluation,p2}.md),
read from the current folder (run from the repository root); the prose figures are registered in ``--claims``
(default docs/claims.toml; with the default pages it must exist). Every path this tool reads is a page, an
option or a path a documented command names: a figure whose command names a path outside the repository
(``../...``, such as the ViT-B/32 reference files) that is absent here is skipped, naming it. What a results
block and a claim are, and the rules of agreement: ``faithclip.docfigures``. ``--reduced`` takes only what is marked
cheap (a few seconds each), ``slow`` blocks (hours) run only with ``--slow``. A command runs in this process
through its own ``main(argv)`` (``faithclip ...``, ``python -m faithclip.MODULE ...``) on one torch thread, or
else as a subprocess of this Python. docs/audit.md's sections keep their own generator
(``--audit-tool``, default ``tools/audit_docs.py``, run as a subprocess when the page is rewritten), which writes
their intros and the seeds table too.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import inspect
import io
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from faithclip.cli.common import torch_threads
from faithclip.docfigures import (
    Figure,
    claim_figures,
    compare_intervals,
    compare_output,
    fresh_seed,
    load_claims,
    pick,
    replace_output,
    results_blocks,
)
from faithclip.explanation import write_atomic

logger = logging.getLogger(__name__)

DOCS = ("README.md", "docs/audit.md", "docs/families.md", "docs/plugins.md", "docs/evaluation.md", "docs/p2.md")
CLAIMS = Path("docs/claims.toml")
AUDIT_DOCS = Path("tools/audit_docs.py")  # docs/audit.md's generator (a tool of the repository, not installed)


class CommandFailed(Exception):
    """A documented command did not print its figures (its exit code and last line of stderr)."""


def _words(command: str) -> tuple[dict[str, str], list[str]]:
    """Leading ``NAME=value`` assignments and the words, globs and ``~`` expanded as a shell would."""
    env, words = {}, shlex.split(command)
    while words and re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    expanded = []
    for word in words:
        word = os.path.expanduser(word)
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        expanded += matches or [word]  # a pattern matching nothing stays literal
    return env, expanded


def _entry(words: list[str]):
    """(main, argv) of a command this process can run itself, or None."""
    if words[:2] == ["faithclip", "audit"]:
        return None  # docs/audit.md's runs print ``format_audit`` of ``run_audit``: see run()
    if words[:1] == ["faithclip"]:
        from faithclip.cli.main import main

        return main, words[1:]
    if words[:2] == ["python", "-m"] and len(words) > 2 and words[2].startswith("faithclip."):
        module = importlib.import_module(words[2])
        if callable(getattr(module, "main", None)):
            return module.main, words[3:]
    return None


def _run_in_process(main, argv: list[str]) -> tuple[int, str, str]:
    out, err, saved = io.StringIO(), io.StringIO(), sys.argv
    takes_argv = bool(inspect.signature(main).parameters)
    with torch_threads(1), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if takes_argv:
                code = main(argv)
            else:  # a main() that reads sys.argv itself
                sys.argv = [main.__module__, *argv]
                code = main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
        finally:
            sys.argv = saved
    return int(code or 0), out.getvalue(), err.getvalue()


def run(command: str) -> str:
    """The standard output of a documented command (a CommandFailed when it exits other than 0 or 1). Its
    ``--out`` folder is a fresh temporary one: a documented run folder is neither resumed nor overwritten."""
    env, words = _words(command)
    if "--out" not in words[:-1]:
        return _run(command, env, words)
    with tempfile.TemporaryDirectory(prefix="faithclip-docs-") as folder:
        index = words.index("--out") + 1
        return _run(command, env, [*words[:index], str(Path(folder) / "out"), *words[index + 1 :]])


def _run(command: str, env: dict[str, str], words: list[str]) -> str:
    if words[:2] == ["faithclip", "audit"] and not env:
        from faithclip.cli.audit import run_command
        from faithclip.errors import FaithclipError
        from faithclip.report.audit_report import format_audit

        try:
            with torch_threads(1):
                return format_audit(run_command(shlex.join(words))) + "\n"
        except (FaithclipError, SystemExit) as error:  # SystemExit: the audit's parser refused the line
            raise CommandFailed(f"{type(error).__name__}: {error}") from None
    entry = None if env else _entry(words)
    if entry is not None:
        code, out, err = _run_in_process(*entry)
    else:
        if words[:1] == ["faithclip"]:
            words = [sys.executable, "-m", "faithclip", *words[1:]]
        elif words[:1] in (["python"], ["python3"]):
            words = [sys.executable, *words[1:]]
        done = subprocess.run(words, capture_output=True, text=True, env={**os.environ, **env})
        code, out, err = done.returncode, done.stdout, done.stderr
    if code not in (0, 1):  # 1: a check the command runs failed; its figures are still printed
        last = (err.strip().splitlines() or ["no message"])[-1]
        raise CommandFailed(f"exit {code}: {last}")
    return out


def seed_default(command: str) -> int | None:
    """The default of the command's ``--seed`` as its ``--help`` states it (0 when it states none), or None
    when the command takes no ``--seed``."""
    words = _words(command)[1]
    if words[:1] == ["faithclip"]:
        from faithclip.cli.main import main as cli_main

        entry = cli_main, words[1:]
    else:
        entry = _entry(words)
    if entry is None:
        return None  # not a command of this package: its seed, if any, is unknown
    text = _run_in_process(entry[0], [*entry[1], "--help"])[1]
    match = re.search(r"--seed\b[^\n]*(?:\n {20,}[^\n]*)*", text)
    if match is None:
        return None
    default = re.search(r"default:? (-?\d+)", match.group(0))
    return int(default.group(1)) if default else 0


def collect(files: list[Path], claims_path: Path = CLAIMS) -> tuple[list[Figure], list[str]]:
    """Every documented figure of the pages (results blocks, then claims), and the claims the pages lost."""
    claims = load_claims(claims_path)
    figures, problems = [], []
    for doc in files:
        text = doc.read_text()
        figures += results_blocks(doc, text)
        found, lost = claim_figures(doc, text, claims)
        figures += found
        problems += lost
    return figures, problems


def absent_outside(command: str) -> str | None:
    """The first path outside the repository (``../...``, also as ``--option=../...``) that the command names and
    that does not exist here, or None (a figure that reads it cannot be rerun here)."""
    for word in shlex.split(command):
        path = word.rpartition("=")[2]
        if path.startswith("../") and not glob.glob(os.path.expanduser(path)):
            return path
    return None


def _selected(figures: list[Figure], reduced: bool, slow: bool) -> tuple[list[Figure], list[str]]:
    """The figures to run, and one line per (page, command) left out and why."""
    chosen, skipped = [], {}
    for figure in figures:
        if reduced and not figure.reduced:
            continue
        absent = absent_outside(figure.command)
        if figure.slow and not slow:
            reason = "slow; --slow runs it"
        elif absent is not None:
            reason = f"{absent} is not available"
        else:
            chosen.append(figure)
            continue
        skipped.setdefault((figure.doc, figure.command, reason), []).append(figure.line)
    return chosen, [
        f"{doc}:{min(lines)}: {len(lines)} figure{'s' * (len(lines) > 1)} skipped ({reason}): `{command}`"
        for (doc, command, reason), lines in skipped.items()
    ]


class Runner:
    """Runs each distinct command once and remembers how long each page's commands took."""

    def __init__(self, execute=run) -> None:
        self.execute, self.outputs, self.seconds = execute, {}, {}

    def __call__(self, figure: Figure) -> str:
        if figure.command not in self.outputs:
            started = time.perf_counter()
            self.outputs[figure.command] = self.execute(figure.command)
            self.seconds[figure.doc] = self.seconds.get(figure.doc, 0.0) + time.perf_counter() - started
        return self.outputs[figure.command]


def disagreements(figure: Figure, runner: Runner) -> list[str]:
    """What a fresh run of the figure's command contradicts (empty: the figure agrees)."""
    try:
        fresh = pick(figure, runner(figure))
    except CommandFailed as error:
        return [f"the command failed ({error})"]
    if fresh is None:
        return [f"its output no longer holds the claimed figure (pattern {figure.output!r})"]
    found = compare_output(figure.documented, fresh)
    if figure.output is not None:  # a claim is one line of quoted figures: name the figure, not the line
        found = [re.sub(r"^output line 1 \([^)]*\), ", "", p) for p in found]
    return found


def check(figures: list[Figure], runner: Runner) -> tuple[list[str], int]:
    """(one line per contradicted figure: doc:line, command, documented vs fresh; how many figures -- results
    runs and claims -- disagree)."""
    problems, disagreeing = [], 0
    for figure in figures:
        found = disagreements(figure, runner)
        disagreeing += bool(found)
        problems += [f"{figure.doc}:{figure.line}: `{figure.command}`: {p}" for p in found]
    return problems, disagreeing


def replicate(figures: list[Figure], runner: Runner) -> tuple[list[str], list[str], int, int]:
    """(report lines, problems, intervals compared, intervals that overlap their replicate's): each figure with
    an interval rerun with its command's seed + 1."""
    lines, problems, total, overlapping = [], [], 0, 0
    for figure in figures:
        where = f"{figure.doc}:{figure.line}: `{figure.command}`"
        count, _ = compare_intervals(figure.documented, figure.documented)
        if not count:
            continue  # no interval: nothing statistical to replicate
        fresh_command = fresh_seed(figure.command, seed_default(figure.command))
        if fresh_command is None:
            lines.append(f"{where}: skipped (the command takes no --seed)")
            continue
        try:
            output = pick(figure, runner(replace(figure, command=fresh_command)))
        except CommandFailed as error:
            problems.append(f"{where}: the replicate `{fresh_command}` failed ({error})")
            continue
        if output is None:
            problems.append(f"{where}: the replicate's output does not hold the claimed figure")
            continue
        count, apart = compare_intervals(figure.documented, output)
        total, overlapping = total + count, overlapping + count - len(apart)
        problems += [f"{where} vs `{fresh_command}`: {p}" for p in apart]
        lines.append(f"{where}: {count - len(apart)} of {count} intervals overlap the replicate's (`{fresh_command}`)")
    return lines, problems, total, overlapping


def regenerate(figures: list[Figure], execute=run, audit_tool: Path = AUDIT_DOCS) -> None:
    """Rewrite each results block's output with a fresh run (claims are prose: they are checked, not written).
    docs/audit.md's blocks are written by their own generator, ``tools/audit_docs.py``."""
    audit_sections: dict[Path, dict[str, None]] = {}
    for figure in figures:
        if figure.block == "claim":
            continue
        if figure.doc.name == "audit.md":
            audit_sections.setdefault(figure.doc, {})[figure.block] = None
            continue
        fresh = execute(figure.command)
        text = figure.doc.read_text()  # read again: the page may have been edited during the run
        current = {f.command: f for f in results_blocks(figure.doc, text) if f.block == figure.block}
        if figure.command not in current:
            raise KeyError(f"{figure.doc}: block {figure.block} lost `{figure.command}` during the run")
        write_atomic(figure.doc, replace_output(text, current[figure.command], fresh).encode())
        logger.info("wrote %s's %s block (`%s`)", figure.doc, figure.block, figure.command)
    for doc, names in audit_sections.items():
        regenerate_audit(doc, list(names), audit_tool)


def regenerate_audit(doc: Path, names: list[str], tool: Path = AUDIT_DOCS) -> None:
    """docs/audit.md's blocks ``names``, rewritten by ``python TOOL DOC NAMES...`` (``tools/audit_docs.py``, a
    tool of the repository, run from its root, as every page here is read)."""
    if not tool.is_file():
        raise CommandFailed(f"{tool} is not here: run from the repository root, or give --audit-tool")
    done = subprocess.run([sys.executable, str(tool), str(doc), *names], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise CommandFailed(f"{tool} exit {done.returncode}: {last}")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def report_check(chosen: list[Figure], lost: list[str], runner: Runner) -> int:
    problems, disagreeing = check(chosen, runner)
    for line in lost + problems:
        print(line)
    for doc, seconds in runner.seconds.items():
        print(f"{doc}: its commands took {seconds:.0f} s")
    claims = sum(figure.block == "claim" for figure in chosen)
    print(
        f"{len(chosen) - disagreeing} of {len(chosen)} documented figures agree with a fresh run "
        f"({len(chosen) - claims} results runs, {claims} claims{f'; {len(lost)} claims lost' if lost else ''})"
    )
    return 1 if lost or problems else 0


def report_replicate(chosen: list[Figure], lost: list[str], runner: Runner) -> int:
    lines, problems, total, overlapping = replicate(chosen, runner)
    for line in lines + lost + problems:
        print(line)
    print(f"{overlapping} of {total} documented intervals overlap their replicate's")
    return 1 if lost or problems else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m faithclip.cli.docs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="*", type=Path, help=f"pages (default: {' '.join(DOCS)})")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="rerun every documented command and compare its figures")
    mode.add_argument(
        "--replicate",
        action="store_true",
        help="rerun every figure with an interval with its seed + 1 and compare the intervals",
    )
    mode.add_argument("--list", action="store_true", help="print every documented command with its doc and line")
    parser.add_argument("--reduced", action="store_true", help="only the figures marked cheap (reduced)")
    parser.add_argument("--slow", action="store_true", help="also the figures marked slow (hours)")
    parser.add_argument(
        "--claims",
        type=Path,
        default=None,
        help=f"the prose figures' registry (default: {CLAIMS}, required with the default pages; "
        "an absent registry given here is no claims)",
    )
    parser.add_argument(
        "--audit-tool",
        type=Path,
        default=AUDIT_DOCS,
        help=f"docs/audit.md's generator, run when that page is rewritten (default: {AUDIT_DOCS})",
    )
    return parser.parse_args(argv)


def usage_problem(args: argparse.Namespace, files: list[Path]) -> str | None:
    """One line saying why the command line cannot run (None: it can): an absent page or registry, or flags
    that do not go together. Every file is read from the current folder (the repository root)."""
    where = " (the default pages are read from the repository root: run there, or name the pages)"
    for path in files:
        if not path.is_file():
            return f"{path}: no such file{where if not args.files else ''}"
    if not args.files and args.claims is None and not CLAIMS.is_file():
        return f"{CLAIMS}: no such file (the claims of the default pages){where}"
    if args.list and (args.reduced or args.slow):
        return "--list lists every documented command; it takes neither --reduced nor --slow"
    return None


def main(argv: list[str] | None = None, execute=run) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error, already printed in one line (2)
        return int(stop.code or 0)
    files = args.files or [Path(name) for name in DOCS]
    usage = usage_problem(args, files)
    try:
        figures, lost = ([], []) if usage else collect(files, args.claims or CLAIMS)
    except (ValueError, KeyError) as error:
        usage = error.args[0]
    if usage:
        print(f"python -m faithclip.cli.docs: {usage}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.list:
        for figure in figures:
            flags = ", ".join(sorted(figure.flags))
            print(f"{figure.doc}:{figure.line}: {figure.block}{f' ({flags})' if flags else ''}: {figure.command}")
        return 0
    chosen, skipped = _selected(figures, args.reduced, args.slow)
    if not chosen and not skipped and not lost:
        print(
            f"python -m faithclip.cli.docs: no documented figures to run in {', '.join(map(str, files))}"
            f"{' marked reduced' if args.reduced else ''}",
            file=sys.stderr,
        )
        return 2
    rewrites_audit = not (args.check or args.replicate) and any(
        f.doc.name == "audit.md" and f.block != "claim" for f in chosen
    )
    if rewrites_audit and not args.audit_tool.is_file():
        print(
            f"python -m faithclip.cli.docs: {args.audit_tool}: no such file (docs/audit.md's generator: run from "
            "the repository root, or give --audit-tool)",
            file=sys.stderr,
        )
        return 2
    for line in skipped:
        print(line)
    try:
        if args.check:
            return report_check(chosen, lost, Runner(execute))
        if args.replicate:
            return report_replicate(chosen, lost, Runner(execute))
        regenerate(chosen, execute, args.audit_tool)
        return 0
    except CommandFailed as error:
        print(f"python -m faithclip.cli.docs: a documented command cannot run: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("python -m faithclip.cli.docs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
