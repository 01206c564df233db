"""One command-line grammar (issue 24, item 4): every command spells a list, an output folder, a device and a
method's options the same way; the old spellings still parse for one release, each with one notice line.

The oracle of an alias is its new spelling: both must parse to the same settings. Everything runs in-process.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from faithclip.cli import main as cli_main
from faithclip.cli.common import DeprecatedAlias, DeprecatedPositional, progress_printer
from faithclip.cli.main import build_parser, main

SRC = Path(__file__).resolve().parents[2] / "src"
RUNS_A_MODEL = ("explain", "verify", "demo", "audit", "check", "evaluate", "bench")
RUNS_METHODS = ("explain", "verify", "check", "evaluate")
NOTICE = "is deprecated and goes in the next release"


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def options(parser: argparse.ArgumentParser, deprecated: bool = False) -> set[str]:
    old = (DeprecatedAlias, DeprecatedPositional)
    return {
        flag for action in parser._actions if isinstance(action, old) == deprecated for flag in action.option_strings
    }


def parsed(argv: list[str]) -> dict:
    """The settings a command line parses to, without the notes the parser leaves for ``main``."""
    args = vars(build_parser().parse_args(argv))
    return {key: value for key, value in args.items() if key not in ("deprecations", "lists_given", "func")}


# ---- the same options on every command ---------------------------------------------------------------
@pytest.mark.parametrize("command", RUNS_A_MODEL)
def test_every_command_that_runs_a_model_takes_the_run_options(command):
    assert {"--device", "--dtype", "--threads", "--no-progress"} <= options(subparsers()[command])


@pytest.mark.parametrize("command", (*RUNS_METHODS, "audit"))
def test_every_command_that_runs_methods_takes_method_options(command):
    assert "--method-option" in options(subparsers()[command])


def test_no_command_keeps_a_separate_json_or_html_option_or_an_old_random_weights_name():
    for name, parser in subparsers().items():
        current = options(parser)
        assert not current & {"--json", "--html", "--random-init", "--random-b32", "--reference", "--method"}, name


# ---- --threads: applied for the command, restored after ------------------------------------------------
def _record_threads(monkeypatch, module) -> list[int]:
    seen = []
    monkeypatch.setattr(module, "run", lambda args: seen.append(torch.get_num_threads()) or 0)
    return seen


def test_threads_is_applied_for_the_command_and_restored(monkeypatch):
    import faithclip.cli.demo as demo

    seen = _record_threads(monkeypatch, demo)
    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    assert main(["demo", "--threads", str(wanted)]) == 0
    assert seen == [wanted] and torch.get_num_threads() == before
    assert main(["demo"]) == 0  # not given: torch's own count, untouched
    assert seen[-1] == before


def test_audit_runs_on_one_thread_by_default_and_threads_overrides_it(monkeypatch):
    import faithclip.cli.audit as audit

    seen = _record_threads(monkeypatch, audit)
    assert main(["audit"]) == 0 and seen == [1]
    assert main(["audit", "--threads", "2"]) == 0 and seen == [1, 2]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_thread_count_is_one_line_and_exit_2(value, capsys):
    assert main(["evaluate", "--out", "x", "--threads", value]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--threads" in lines[0]


def test_demo_threads_override_the_small_model_rule(monkeypatch, tmp_path):
    import faithclip.demo as demo

    handle = argparse.Namespace(model=torch.nn.Linear(2, 2))  # far below 20 M parameters
    monkeypatch.setattr(demo, "_run", lambda *args: torch.get_num_threads())
    before = torch.get_num_threads()
    assert demo.run_demo(tmp_path, handle) == 1  # the documented rule: one thread for a small model
    assert demo.run_demo(tmp_path, handle, threads=2) == 2
    assert torch.get_num_threads() == before


def test_no_progress_prints_nothing(capsys):
    progress_printer(argparse.Namespace(no_progress=True))("a line")
    progress_printer(argparse.Namespace(no_progress=False), "stderr")("shown")
    out, err = capsys.readouterr()
    assert out == "" and err == "shown\n"


def test_audit_no_progress_hides_its_log_lines_for_the_run_only():
    import logging

    from faithclip.cli.audit import quiet_progress

    audit_logger = logging.getLogger("faithclip.audit")
    before = audit_logger.level
    with quiet_progress(True):
        assert not audit_logger.isEnabledFor(logging.INFO)
    assert audit_logger.level == before


# ---- deprecated spellings: the same settings as the new one, and one notice line ------------------------
ALIASES = [
    (
        ["explain", "a.png", "--text", "t", "--method", "grad_cam,rollout"],
        ["explain", "a.png", "--text", "t", "--methods", "grad_cam,rollout"],
    ),
    (["verify", "--random-b32"], ["verify", "--random-weights"]),
    (["verify", "--random-b32", "--reference", "cfg"], ["verify", "--random-weights", "--model", "cfg"]),
    (["audit", "--random-init", "--model", "cfg"], ["audit", "--random-weights", "--model", "cfg"]),
    (["audit", "--methods", "grad_cam", "legrad"], ["audit", "--methods", "grad_cam,legrad"]),
    (["audit", "--correctness-alphas", "0.5", "0.75"], ["audit", "--correctness-alphas", "0.5,0.75"]),
    (["check", "grad_cam", "rise"], ["check", "--methods", "grad_cam,rise"]),
    (["bench", "--reference", "cfg"], ["bench", "--model", "cfg"]),
]


@pytest.mark.parametrize("old, new", ALIASES, ids=[" ".join(old) for old, _ in ALIASES])
def test_an_old_spelling_parses_to_what_the_new_one_does(old, new):
    old_args, new_args = parsed(old), parsed(new)
    if old[0] == "check":  # the positional list lands beside --methods; run() takes whichever was given
        old_args["methods"], old_args["positional_methods"] = old_args["positional_methods"], []
    assert old_args == new_args
    assert build_parser().parse_args(old).deprecations  # a notice is left for main to print
    assert not getattr(build_parser().parse_args(new), "deprecations", None)


@pytest.mark.parametrize(
    "command, alias, use",
    [
        ("verify", ["--json", "v.json"], "use --out DIR (it writes verify.json there)"),
        ("bench", ["--json", "b.json"], "use --out DIR (it writes bench.json there)"),
        ("audit", ["--html", "a.html"], "use --out DIR (it writes report.html there)"),
        ("audit", ["--random-init"], "use --random-weights"),
        ("explain", ["--method", "grad_cam", "x.png", "--text", "t"], "use --methods M[,M...]"),
    ],
)
def test_an_old_spelling_prints_one_notice_line(monkeypatch, capsys, command, alias, use):
    module = getattr(__import__(f"faithclip.cli.{command}").cli, command)
    monkeypatch.setattr(module, "run", lambda args: 0)
    assert main([command, *alias]) == 0
    assert capsys.readouterr().err.splitlines() == [f"faithclip {command}: warning: {alias[0]} {NOTICE}; {use}"]


def test_the_json_alias_still_writes_its_file(monkeypatch, tmp_path, capsys):
    import faithclip.equivalence as equivalence

    monkeypatch.setattr(equivalence, "verify_equivalence", lambda *a, **k: [])
    monkeypatch.setattr(equivalence, "format_table", lambda rows: "")
    assert main(["verify", "--no-p1", "--no-progress", "--json", str(tmp_path / "v.json")]) == 0
    assert json.loads((tmp_path / "v.json").read_text()) == {"model": "shapes-clip", "equivalence": [], "failures": []}
    assert capsys.readouterr().err.count(NOTICE) == 1


def test_a_space_separated_list_prints_its_comma_form(monkeypatch, capsys):
    import faithclip.cli.audit as audit

    monkeypatch.setattr(audit, "run", lambda args: 0)
    assert main(["audit", "--methods", "grad_cam", "legrad"]) == 0
    assert capsys.readouterr().err.strip() == (
        "faithclip audit: warning: --methods grad_cam legrad: a space-separated list is deprecated and goes in the "
        "next release; write --methods grad_cam,legrad"
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["explain", "a.png", "--text", "t", "--methods", "grad_cam", "--method", "rollout"],
            "--method was given twice; give one comma list: --methods grad_cam,rollout",  # the current spelling
        ),
        (
            ["explain", "a.png", "--text", "t", "--method", "grad_cam", "--methods", "rollout"],
            "--methods was given twice; give one comma list: --methods grad_cam,rollout",
        ),
        (
            ["explain", "a.png", "--text", "t", "--method", "grad_cam", "--method", "rollout"],
            "--method was given twice; give one comma list: --methods grad_cam,rollout",
        ),
        (["audit", "--methods", "grad_cam", "--methods", "legrad"], "give one comma list: --methods grad_cam,legrad"),
        (["audit", "--correctness-alphas", "0.5,x"], "is not a comma list of float values"),
    ],
)
def test_a_list_given_twice_or_malformed_is_one_line_and_exit_2(argv, words, capsys):
    assert main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and words in lines[0], lines


def test_check_methods_given_twice_ways_or_not_at_all_is_one_line(capsys):
    assert main(["check", "grad_cam", "--methods", "rollout"]) == 2
    assert "give them once, as --methods" in capsys.readouterr().err
    assert main(["check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "no method to check: give --methods" in err[0]


# ---- --method-option: one parser, one check, one-line errors ---------------------------------------------
@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "img.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path)
    return path


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["--methods", "grad_eclip", "--method-option", "grad_eclip.layers=99"],
            "grad_eclip.layers=99: grad_eclip's layers must be at most",
        ),
        (
            ["--methods", "grad_eclip", "--method-option", "grad_eclip.window=3"],
            "grad_eclip.window is not an option of grad_eclip",
        ),
        (["--method-option", "rise.masks=8"], "options given for method 'rise', which is not among the methods run"),
        (["--method-option", "rise"], "--method-option 'rise' must look like NAME.KEY=VALUE"),
    ],
)
def test_explain_method_options_are_checked_in_one_line(image, tmp_path, capsys, argv, words):
    assert main(["explain", str(image), "--text", "a red circle", "--out", str(tmp_path / "out"), *argv]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["check", "--methods", "grad_eclip"], ["verify", "--no-progress"]])
def test_check_and_verify_refuse_a_bad_method_option_before_any_work(command, capsys):
    assert main([*command, "--method-option", "grad_eclip.layers=banana"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "grad_eclip.layers='banana': grad_eclip's layers must be a whole number" in lines[0]


def test_an_explain_method_option_gives_the_map_its_own_option_gives(image, tmp_path, capsys):
    """Oracle: --layers, the option explain always had; --method-option grad_eclip.layers=2 must be the same."""
    common = ["explain", str(image), "--text", "a red circle", "--methods", "grad_eclip", "--no-progress"]
    assert main([*common, "--layers", "2", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--method-option", "grad_eclip.layers=2", "--out", str(tmp_path / "b")]) == 0
    assert main([*common, "--out", str(tmp_path / "c")]) == 0  # the default layers, for contrast
    maps = {run: np.array(json.loads(next((tmp_path / run).glob("img__*.json")).read_text())["map"]) for run in "abc"}
    np.testing.assert_array_equal(maps["a"], maps["b"])
    assert not np.array_equal(maps["a"], maps["c"])  # the option did reach the method
    record = json.loads((tmp_path / "b" / "explain.json").read_text())
    assert record["method_options"] == {"grad_eclip": {"layers": 2}}


def test_check_method_options_override_the_checks_own_sizes(monkeypatch, capsys):
    import faithclip.audit.check as check

    seen = []
    monkeypatch.setattr(
        check,
        "run_check",
        lambda handle, spec, settings, origin, progress: (
            seen.append(settings) or {"method": spec.name, "failed": False, "checks": []}
        ),
    )
    monkeypatch.setattr("faithclip.report.check_report.format_cards", lambda cards: "")
    assert main(["check", "--methods", "rise", "--checks", "p1", "--method-option", "rise.masks=32"]) == 0
    assert seen[0].options("rise") == {"masks": 32} and seen[0].options("m2ib") == {"steps": 5}


# ---- audit: the options are AuditSettings' fields --------------------------------------------------------
def test_every_audit_setting_is_an_option_with_its_help_and_default():
    from dataclasses import fields

    from faithclip.audit.run import AuditSettings
    from faithclip.cli.audit import settings_from_args

    parser = subparsers()["audit"]
    by_flag = {action.option_strings[0]: action for action in parser._actions if action.option_strings}
    for setting in fields(AuditSettings):
        action = by_flag[setting.metadata.get("option", "--" + setting.name.replace("_", "-"))]
        assert action.help == setting.metadata["help"]
    assert settings_from_args(build_parser().parse_args(["audit"])) == AuditSettings()


def test_the_four_options_no_doc_or_run_used_reach_the_audit(tmp_path):
    """--template, --confidence, --bootstrap-seed and --min-effect: each changes what the audit computes with."""
    from faithclip.audit.run import AuditSettings
    from faithclip.cli.audit import load_inputs, settings_from_args

    args = build_parser().parse_args(["audit", "--confidence", "0.9", "--bootstrap-seed", "7", "--min-effect", "0.2"])
    settings = settings_from_args(args)
    assert settings == AuditSettings(confidence=0.9, bootstrap_seed=7, min_effect=0.2)
    bootstrap, design = settings.bootstrap(), settings.p2_design()
    assert (bootstrap.confidence, bootstrap.seed, design.min_effect, design.bootstrap_seed) == (0.9, 7, 0.2, 7)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    (tmp_path / "names.txt").write_text("cat\n_skipped\ndog\n")
    args = build_parser().parse_args(
        [
            "audit",
            "--images",
            str(image),
            "--class-names",
            str(tmp_path / "names.txt"),
            "--template",
            "a drawing of a {}",
        ]
    )
    _, data = load_inputs(args)
    assert data.prompts == ["a drawing of a cat", "a drawing of a dog"]


def test_audit_method_options_reach_p2_and_are_checked_before_any_work(monkeypatch, capsys):
    import faithclip.audit.p2 as p2
    import faithclip.audit.run as audit_run
    from faithclip.audit.run import AuditSettings
    from faithclip.cli.audit import parse_command, settings_from_args

    argv = [
        "audit",
        "--ladder",
        "--methods",
        "rise,grad_cam",
        "--method-option",
        "rise.masks=64",
        "--method-option",
        "rise.seed=3",
    ]
    settings = settings_from_args(build_parser().parse_args(argv))
    assert settings.options() == {"rise": {"masks": 64, "seed": 3}}
    assert settings_from_args(parse_command(settings.command())) == settings  # the command line round-trips
    seen = []
    monkeypatch.setattr(audit_run, "audit_departure", lambda *a, **k: {})
    monkeypatch.setattr(p2, "p2_test", lambda handle, methods, design, options, progress: seen.append(options) or {})
    from faithclip.models.loading import load

    audit_run.run_audit(load(), settings)
    assert seen == [{"rise": {"masks": 64, "seed": 3}}]
    capsys.readouterr()  # this test's own load() above may draw transformers' loading bar; not the CLI's output
    for bad, words in (
        (["--method-option", "rise.masks=0"], "rise.masks=0: rise's masks must be a whole number"),
        (["--method-option", "legrad.layers=1"], "not among the methods run"),
    ):
        monkeypatch.setattr(audit_run, "audit_departure", lambda *a, **k: pytest.fail("work before the check"))
        assert main([*argv[:4], *bad]) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and words in lines[0], lines
    assert AuditSettings().options() == {}


def test_settings_command_writes_lists_in_the_one_grammar():
    from faithclip.audit.run import AuditSettings
    from faithclip.cli.audit import parse_command, settings_from_args

    settings = AuditSettings(methods=("grad_cam", "legrad"), correctness_alphas=(0.5, 0.75))
    assert settings.command() == "faithclip audit --correctness-alphas 0.5,0.75 --methods grad_cam,legrad"
    assert settings_from_args(parse_command(settings.command())) == settings


# ---- no silent skips -------------------------------------------------------------------------------------
def test_a_subcommand_that_fails_to_import_raises(monkeypatch):
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", (*cli_main.SUBCOMMANDS, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="faithclip.cli.no_such_command"):
        build_parser()


def test_a_method_module_that_fails_to_import_raises():
    """A shipped method module that cannot be imported (here: blocked) is an error, not a method quietly gone."""
    code = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'faithclip.methods.rollout':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import faithclip.methods\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert process.returncode != 0
    assert "ModuleNotFoundError: No module named 'faithclip.methods.rollout'" in process.stderr
