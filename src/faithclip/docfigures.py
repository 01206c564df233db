"""The documented figures: where they are in a page, and whether a fresh run of their command agrees.

Two forms hold a figure in a page:

* a **results block**, between ``<!-- results:NAME:start [FLAGS] -->`` and ``<!-- results:NAME:end -->``,
  holding fenced runs (a fence whose first line is ``$ COMMAND``, the rest that command's standard
  output) or, when the line after the start marker is ``<!-- $ COMMAND -->``, the command's output itself
  as Markdown (a table stays a rendered table);
* a **claim** of ``docs/claims.toml``: a figure quoted in prose, picked from the page by one regular
  expression and from the command's output by another.

FLAGS are words: ``reduced`` (cheap, seconds: the fast check runs it; docs/audit.md's block *named* ``reduced``
is the demo's size, minutes, and only ``python tools/audit_docs.py --check --reduced`` singles it out) and
``slow`` (hours: rerun only when asked). A documented figure agrees with a fresh output when
``value [low, high]`` has ``value`` inside the fresh interval, and any other number equals the fresh one to
its printed precision (one unit of the last digit: float noise can flip a rounding). Numbers that are
durations (``12 s``, ``(405 s)``) are not compared. The replication compares intervals instead: a
documented interval agrees with a replicate run when the two overlap.

This module is pure text; ``faithclip.cli.docs`` runs the commands.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

NUMBER = r"nan|[-+−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
TOKEN = re.compile(rf"\[({NUMBER}), ({NUMBER})\]|(?<![\w.\-+])({NUMBER})(?![\w.])")
DURATION = re.compile(r"\s?(?:s|ms|min|h)\b")
START = re.compile(r"<!-- results:([\w-]+):start((?: [\w-]+)*) -->")
RAW_COMMAND = re.compile(r"\A\s*<!-- \$ (.+?) -->\n")
FENCE = re.compile(r"```\n\$ ([^\n]+)\n(.*?)```", re.DOTALL)
FLAGS = frozenset({"reduced", "slow"})


@dataclass(frozen=True)
class Figure:
    """One documented command and the text it printed, as a page holds it."""

    doc: Path
    line: int  # of the command in the page (1-based)
    command: str
    documented: str  # the output as documented (a claim: the quoted figures, space-separated)
    block: str  # the results block's name, or "claim"
    flags: frozenset[str] = frozenset()
    output: str | None = None  # a claim: the regular expression that picks its figures from the output
    scale: float = 1.0  # a claim: the page's figures are the output's times this
    span: tuple[int, int] = (0, 0)  # where ``documented`` sits in the page (results blocks)
    raw: bool = False  # the output is the page's Markdown itself, not a fence

    @property
    def reduced(self) -> bool:
        return "reduced" in self.flags

    @property
    def slow(self) -> bool:
        return "slow" in self.flags


# ---- numbers ------------------------------------------------------------------------------------------
def _value(text: str) -> float:
    return math.nan if text == "nan" else float(text.replace("−", "-"))


def _unit(text: str) -> float:
    mantissa, _, exponent = text.lower().partition("e")
    digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (-digits + (int(exponent) if exponent else 0))


def tokens(line: str) -> list[tuple]:
    """``("interval", low, high, unit)`` or ``("number", value, unit)`` in order of appearance; a number
    followed by a unit of time is ``("duration", value, unit)``."""
    out = []
    for match in TOKEN.finditer(line):
        if match.group(3) is None:
            out.append(("interval", _value(match.group(1)), _value(match.group(2)), _unit(match.group(1))))
        else:
            kind = "duration" if DURATION.match(line, match.end()) else "number"
            out.append((kind, _value(match.group(3)), _unit(match.group(3))))
    return out


def shape(line: str) -> str:
    """The line with every number replaced: two lines of one form print the same figures."""
    return " ".join(TOKEN.sub("#", line).split())


def _same(a: float, b: float, unit: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= unit * 1.0001


def compare_output(documented: str, fresh: str) -> list[str]:
    """One message per documented figure that the fresh output contradicts (empty: consistent)."""
    problems = []
    doc_lines, new_lines = documented.strip("\n").splitlines(), fresh.strip("\n").splitlines()
    if len(doc_lines) != len(new_lines):
        return [f"the documented output has {len(doc_lines)} lines, a fresh run prints {len(new_lines)}"]
    for number, (doc, new) in enumerate(zip(doc_lines, new_lines), 1):
        if shape(doc) != shape(new):
            problems.append(f"output line {number} differs in form: documented {doc.strip()!r}, fresh {new.strip()!r}")
            continue
        label = (doc.split() or ["?"])[0]
        doc_tokens, new_tokens = tokens(doc), tokens(new)
        for index, (d, f) in enumerate(zip(doc_tokens, new_tokens)):
            if f[0] in ("interval", "duration"):
                continue  # an interval qualifies the figure before it; a duration is the machine's, not a figure
            value = d[1]
            following = new_tokens[index + 1] if index + 1 < len(new_tokens) else None
            if following is not None and following[0] == "interval":
                low, high, unit = following[1], following[2], following[3]
                slack = unit / 2  # the printed bounds are rounded
                inside = (math.isnan(value) and math.isnan(f[1])) or (low - slack <= value <= high + slack)
                if not inside:
                    problems.append(
                        f"output line {number} ({label}), figure {index + 1}: documented {value:g} lies "
                        f"outside the fresh interval [{low:g}, {high:g}]"
                    )
            elif not _same(value, f[1], max(d[2], f[2])):
                problems.append(
                    f"output line {number} ({label}), figure {index + 1}: documented {value:g}, fresh {f[1]:g}"
                )
    return problems


def compare_intervals(documented: str, replicate: str) -> tuple[int, list[str]]:
    """(how many documented intervals, one message per documented interval that a replicate's interval at the
    same place does not overlap). A line whose form changed is one message."""
    count, problems = 0, []
    doc_lines, new_lines = documented.strip("\n").splitlines(), replicate.strip("\n").splitlines()
    if len(doc_lines) != len(new_lines):
        return 0, [f"the documented output has {len(doc_lines)} lines, the replicate prints {len(new_lines)}"]
    for number, (doc, new) in enumerate(zip(doc_lines, new_lines), 1):
        doc_tokens, new_tokens = tokens(doc), tokens(new)
        doc_iv = [t for t in doc_tokens if t[0] == "interval"]
        new_iv = [t for t in new_tokens if t[0] == "interval"]
        if len(doc_iv) != len(new_iv):
            problems.append(
                f"output line {number} differs in form: documented {doc.strip()!r}, replicate {new.strip()!r}"
            )
            count += len(doc_iv)
            continue
        label = (doc.split() or ["?"])[0]
        for index, (d, f) in enumerate(zip(doc_iv, new_iv), 1):
            count += 1
            slack = max(d[3], f[3]) / 2
            if not (d[1] <= f[2] + slack and f[1] <= d[2] + slack):
                problems.append(
                    f"output line {number} ({label}), interval {index}: documented [{d[1]:g}, {d[2]:g}] "
                    f"does not overlap the replicate's [{f[1]:g}, {f[2]:g}]"
                )
    return count, problems


# ---- pages ----------------------------------------------------------------------------------------------
def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def block_bounds(text: str, name: str) -> tuple[int, int]:
    """Where the body of results block ``name`` begins and ends (a KeyError when the page has none)."""
    match = re.search(rf"<!-- results:{re.escape(name)}:start(?: [\w-]+)* -->", text)
    end = f"<!-- results:{name}:end -->"
    if match is None or end not in text[match.end() :]:
        raise KeyError(f"no <!-- results:{name}:start --> ... {end} block")
    return match.end(), text.index(end, match.end())


def results_blocks(doc: Path, text: str) -> list[Figure]:
    """Every documented run of the page's results blocks, in page order."""
    figures = []
    for match in START.finditer(text):
        name, flags = match.group(1), frozenset(match.group(2).split())
        unknown = flags - FLAGS
        if unknown:
            raise ValueError(
                f"{doc}:{_line_of(text, match.start())}: unknown results flags {sorted(unknown)}; "
                f"known: {sorted(FLAGS)}"
            )
        begin, finish = block_bounds(text, name)
        body = text[begin:finish]
        raw = RAW_COMMAND.match(body)
        if raw is not None:
            start = begin + raw.end()
            figures.append(
                Figure(
                    doc,
                    _line_of(text, begin + raw.start(1)),
                    raw.group(1),
                    text[start:finish],
                    name,
                    flags,
                    span=(start, finish),
                    raw=True,
                )
            )
            continue
        for fence in FENCE.finditer(body):
            figures.append(
                Figure(
                    doc,
                    _line_of(text, begin + fence.start(1)),
                    fence.group(1),
                    fence.group(2),
                    name,
                    flags,
                    span=(begin + fence.start(2), begin + fence.end(2)),
                )
            )
    return figures


@dataclass
class Claim:
    """A figure quoted in prose: ``text`` finds it in ``doc`` (its groups are the figures), ``output`` in what
    ``command`` prints (as many groups, in the same order)."""

    doc: str
    command: str
    text: str
    output: str
    flags: list[str] = field(default_factory=list)
    scale: float = 1.0  # the page states the output's figures times this (100: a fraction printed as a percent)


def load_claims(path: Path) -> list[Claim]:
    """The claims registry (a TOML file of ``[[claim]]`` tables); a missing file is no claims."""
    if not path.is_file():
        return []
    try:
        entries = tomllib.loads(path.read_text()).get("claim", [])
        claims = [Claim(**entry) for entry in entries]
    except (tomllib.TOMLDecodeError, TypeError) as error:
        raise ValueError(f"{path}: not a claims registry ({error})") from None
    for claim in claims:
        unknown = set(claim.flags) - FLAGS
        if unknown:
            raise ValueError(f"{path}: claim on {claim.doc}: unknown flags {sorted(unknown)}")
        for pattern in (claim.text, claim.output):
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{path}: claim on {claim.doc}: bad regular expression {pattern!r}: {error}") from None
    return claims


def claim_figures(doc: Path, text: str, claims: list[Claim]) -> tuple[list[Figure], list[str]]:
    """The claims on this page as figures (the documented text: the quoted groups), and one message per claim
    whose text the page no longer holds (a claim that matches nothing must fail, not pass silently)."""
    figures, problems = [], []
    for claim in claims:
        if Path(claim.doc) != doc and Path(claim.doc).resolve() != doc.resolve():
            continue
        match = re.search(claim.text, text, re.DOTALL)
        if match is None:
            problems.append(f"{doc}: the claim of `{claim.command}` is not in the page (pattern {claim.text!r})")
            continue
        documented = " ".join(" ".join(g.split()) for g in match.groups())
        figures.append(
            Figure(
                doc,
                _line_of(text, match.start(1) if match.groups() else match.start()),
                claim.command,
                documented,
                "claim",
                frozenset(claim.flags),
                output=claim.output,
                scale=claim.scale,
            )
        )
    return figures, problems


def _scaled(match: re.Match, scale: float) -> str:
    if match.group(3) is None:
        return match.group(0)  # an interval keeps its own numbers: scale them through their own groups
    text = match.group(3)
    digits = len(text.split(".")[1]) if "." in text and "e" not in text.lower() else 0
    return f"{_value(text) * scale:.{max(0, digits - round(math.log10(scale)))}f}"


def scale_numbers(text: str, scale: float) -> str:
    """``text`` with every number multiplied by ``scale`` (a power of ten), printed to the same precision."""
    if scale == 1:
        return text
    text = TOKEN.sub(
        lambda m: (
            _scaled(m, scale)
            if m.group(3)
            else f"[{scale_numbers(m.group(1), scale)}, {scale_numbers(m.group(2), scale)}]"
        ),
        text,
    )
    return text


def pick(figure: Figure, fresh: str) -> str | None:
    """The fresh counterpart of a figure: a claim's groups from the output (None when absent; a group that
    matched nothing is ``-``, as a table shows a cell with nothing in it), or the output."""
    if figure.output is None:
        return fresh
    match = re.search(figure.output, fresh, re.DOTALL)
    if match is None:
        return None
    picked = " ".join(" ".join((g if g is not None else "-").split()) for g in match.groups())
    return scale_numbers(picked, figure.scale)


# ---- commands -------------------------------------------------------------------------------------------
def fresh_seed(command: str, default: int | None) -> str | None:
    """The command with its ``--seed`` moved on by one (``--seed N`` -> ``N + 1``; absent: the command's
    default + 1, when ``default`` is known); None when the command takes no seed."""
    words = shlex.split(command)
    for index, word in enumerate(words):
        if word == "--seed" and index + 1 < len(words):
            words[index + 1] = str(int(words[index + 1]) + 1)
            return shlex.join(words)
        if word.startswith("--seed="):
            words[index] = f"--seed={int(word.split('=', 1)[1]) + 1}"
            return shlex.join(words)
    if default is None:
        return None
    return shlex.join([*words, "--seed", str(default + 1)])


def replace_output(text: str, figure: Figure, fresh: str) -> str:
    """The page with the figure's documented output replaced by ``fresh`` (results blocks only)."""
    begin, finish = figure.span
    body = fresh.rstrip("\n") + ("\n\n" if figure.raw else "\n")  # Markdown: a blank line ends a table
    return text[:begin] + body + text[finish:]
