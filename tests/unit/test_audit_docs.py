"""One code path for the audit: CLI defaults, the docs' commands, the demo's size; and the docs check."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from faithclip.audit.run import AuditSettings
from faithclip.cli.audit import add_arguments, parse_command, run_command, settings_from_args
from faithclip.cli.main import main as cli_main
from faithclip.demo import DEMO_AUDIT
from faithclip.models.loading import shipped_models
from faithclip.report.audit_report import audit_html


def load_tool(name: str):
    """A script of the repository's tools/ folder (not part of the installed package), imported as a module."""
    path = Path(__file__).resolve().parents[2] / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its functions pickle by module name (the --jobs workers)
    spec.loader.exec_module(module)
    return module


audit_docs = load_tool("audit_docs")
MAIN, REDUCED, SECTIONS = audit_docs.MAIN, audit_docs.REDUCED, audit_docs.SECTIONS
check, main, render_run = audit_docs.check, audit_docs.main, audit_docs.render_run
compare_output = audit_docs.compare_output

needs_shapes = pytest.mark.skipif("shapes-clip" not in shipped_models(), reason="the shipped shapes model is absent")

TINY = (
    "faithclip audit --scenes 12 --map-images 1 --deletion-steps 2 --ladder --correctness --p2-scenes 6 "
    "--p2-ladders 1 --p2-rungs 3 --ladder-deletion-steps 2 --correctness-alphas 0.5 --methods grad_cam --resamples 200"
)


def test_cli_defaults_are_the_settings_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from_args(parser.parse_args([])) == AuditSettings()
    assert settings_from_args(parse_command(MAIN)) == AuditSettings(ladder=True, correctness=True)
    assert settings_from_args(parse_command(REDUCED)) == DEMO_AUDIT  # the demo runs what the doc names


def test_settings_command_round_trips():
    settings = AuditSettings(
        scenes=7,
        aspect=0.75,
        ladder=True,
        p2_scenes=9,
        p2_rungs=4,
        min_effect=0.2,
        methods=("grad_cam", "legrad"),
        deletion_steps=3,
        seed=4,
        confidence=0.9,
    )
    assert settings_from_args(parse_command(settings.command())) == settings
    assert AuditSettings().command() == "faithclip audit"
    for runs in SECTIONS.values():
        for run in runs:
            parse_command(run.command)  # every documented command is valid CLI input


@pytest.mark.parametrize(
    "arguments",
    [
        ["--scenes", "0"],
        ["--correctness-alphas", "2"],
        ["--ladder", "--p2-rungs", "2"],
        ["--ladder", "--min-effect", "1.5"],
        ["--out", "/proc/no-such-dir"],
        ["--random-weights", "--model", "/proc/no-such-dir"],
        ["--ladder", "--methods", "no_such_method"],
    ],
)
def test_bad_usage_is_one_line_and_exit_2(arguments, capsys):
    assert cli_main(["audit", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error


def test_compare_output_reads_intervals_and_exact_figures():
    fresh = "  grad_cam   0.50 [0.20, 0.80]   0.9245\n"
    assert compare_output("  grad_cam   0.70 [0.40, 0.95]   0.9245\n", fresh) == []  # inside the fresh interval
    assert compare_output("  grad_cam   0.85 [0.20, 0.80]   0.9245\n", fresh)[0].startswith("output line 1 (grad_cam)")
    assert len(compare_output("  grad_cam   0.50 [0.20, 0.80]   0.9300\n", fresh)) == 1  # exact figure moved
    assert compare_output("  grad_cam   0.50 [0.20, 0.80]   0.9246\n", fresh) == []  # one unit: rounding noise
    assert "differs in form" in compare_output("  legrad x 0.50 [0.20, 0.80] 0.9245\n", fresh)[0]


@needs_shapes
def test_docs_check_passes_on_a_fresh_block_and_fails_on_a_wrong_figure(tmp_path, capsys):
    results = run_command(TINY)
    fragment = audit_html(results)
    assert "inconclusive" in fragment or "pass" in fragment or "flagged" in fragment
    assert "Reproduce" in fragment and "<script" not in fragment
    block = render_run(TINY, results)
    document = tmp_path / "audit.md"
    document.write_text(f"# audit\n\n<!-- results:reduced:start -->\n{block}<!-- results:reduced:end -->\n")
    assert main(["--check", str(document), "--reduced"]) == 0  # reruns the command: a fresh run agrees
    entry = results["p2"]["primary"]["methods"]["grad_cam"]
    wrong_r = -0.99 if entry["low"] > -0.9 else 0.99
    lines = block.splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip().startswith("primary")) + 2  # grad_cam's r row
    assert lines[row].strip().startswith("grad_cam")
    lines[row] = re.sub(r"-?\d+\.\d+", f"{wrong_r:.2f}", lines[row], count=1)
    wrong = tmp_path / "wrong.md"
    wrong.write_text(document.read_text().replace(block, "\n".join(lines) + "\n"))
    problems = check(wrong, reduced=True, run=lambda command: results)
    assert len(problems) == 1 and "grad_cam" in problems[0] and "outside the fresh interval" in problems[0]
    capsys.readouterr()
    assert main(["--check", str(wrong), "--reduced"]) == 1
    assert "outside the fresh interval" in capsys.readouterr().out


def test_docs_check_usage_errors(tmp_path):
    assert main(["--check", str(tmp_path / "missing.md")]) == 2
    empty = tmp_path / "empty.md"
    empty.write_text("no results here\n")
    assert main(["--check", str(empty), "--reduced"]) == 2
