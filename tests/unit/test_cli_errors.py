"""The command line's contract (issue 11): a user error is ONE line on stderr and exit 2, never a traceback;
a failed check exits 1; Ctrl-C exits 130 with one line; nothing is written when a command refuses.

Bad inputs run as real ``python -m faithclip`` subprocesses (offline, one thread), two at a time, each in a
directory of its own whose contents are compared before and after: no output file, no empty folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

SRC = Path(__file__).resolve().parents[2] / "src"
TEXT = ("--text", "a red circle")

# (id, argv, exit code, a fragment the one-line message must hold): the inputs issue 11 measured, each run
# as a real ``python -m faithclip`` process
CASES = [
    ("layers-0", ["explain", "img.png", *TEXT, "--layers", "0"], 2, "--layers: must be a whole number of at least 1"),
    ("layers-negative", ["explain", "img.png", *TEXT, "--layers", "-1"], 2, "--layers: must be a whole number"),
    (
        "layers-99",
        ["explain", "img.png", *TEXT, "--layers", "99"],
        2,
        "--layers 99: attention_eclip's layers must be at most 4",
    ),
    ("official-1x1", ["explain", "one.png", *TEXT, "--methods", "grad_eclip_official"], 2, "a 1x1 image is too small"),
    (
        "official-3000x1",
        ["explain", "wide.png", *TEXT, "--methods", "grad_eclip_official"],
        2,
        "a 3000x1 image is too small",
    ),
    ("verify-out-unwritable", ["verify", "--out", "blocker/v"], 2, "Choose another --out"),
    (
        "cosine-with-other",
        ["explain", "img.png", *TEXT, "--target", "cosine", "--other", "X"],
        2,
        "--other is not used by --target cosine",
    ),
    (
        "contrast-without-other",
        ["explain", "img.png", *TEXT, "--target", "contrast"],
        2,
        "--target contrast needs exactly one --other TEXT",
    ),
    ("model-typo", ["explain", "img.png", *TEXT, "--model", "shapes_clip"], 2, "Did you mean 'shapes-clip'"),
    ("explain-out-unwritable", ["explain", "img.png", *TEXT, "--out", "blocker/x"], 2, "Choose another --out"),
    ("demo-out-unwritable", ["demo", "--out", "blocker/d"], 2, "Choose another --out"),
    ("demo-scenes-0", ["demo", "--scenes", "0"], 2, "--scenes: must be a whole number of at least 1"),
    ("bench-repeats-0", ["bench", "--repeats", "0"], 2, "--repeats: must be a whole number"),
    ("bench-out-unwritable", ["bench", "--out", "blocker/b"], 2, "Choose another --out"),
    ("train-minutes-0", ["train-shapes", "--minutes", "0"], 2, "--minutes: must be a positive number"),
    ("train-out-unwritable", ["train-shapes", "--out", "blocker/m"], 2, "Choose another --out"),
    ("methods-unknown-option", ["methods", "--bogus"], 2, "unrecognized arguments: --bogus"),
]

# More bad inputs, through the same ``main`` in this process (the subprocess cases show the process level).
IN_PROCESS = [
    ("verify-layers-0", ["verify", "--layers", "0"], 2, "--layers: must be a whole number"),
    (
        "probability-without-other",
        ["explain", "img.png", *TEXT, "--target", "probability"],
        2,
        "--target probability needs the other prompts",
    ),
    ("explain-out-is-file", ["explain", "img.png", *TEXT, "--out", "blocker"], 2, "is a file, not a directory"),
    ("missing-image", ["explain", "missing.png", *TEXT], 2, "image not found: missing.png"),
    ("empty-text", ["explain", "img.png", "--text", " "], 2, "empty text"),
    (
        "text-method-without-text-side",
        ["explain", "img.png", *TEXT, "--side", "text", "--methods", "grad_cam"],
        2,
        "has no text-side explanation",
    ),
    ("bench-k-negative", ["bench", "--k", "-5"], 2, "--k: must be a whole number"),
    ("bench-rise-masks-0", ["bench", "--rise-masks", "0"], 2, "--rise-masks: must be a whole number"),
    ("train-seed-negative", ["train-shapes", "--seed", "-1"], 2, "--seed: must be a whole number of at least 0"),
    ("train-minutes-negative", ["train-shapes", "--minutes", "-3"], 2, "--minutes: must be a positive number"),
    ("unknown-command", ["explian"], 2, "invalid choice: 'explian'"),
]


def environment() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    return env


def make_inputs(directory: Path) -> None:
    Image.new("RGB", (64, 64), (200, 30, 30)).save(directory / "img.png")
    Image.new("RGB", (1, 1), (200, 30, 30)).save(directory / "one.png")
    Image.new("RGB", (3000, 1), (200, 30, 30)).save(directory / "wide.png")
    (directory / "blocker").write_text("a file where a directory would have to be\n")


def listing(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


def run_cli(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "faithclip", *argv],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, set[str], set[str]]]:
    """Every case run once, two at a time: (process, files before, files after) by case id."""
    root = tmp_path_factory.mktemp("cli-errors")

    def one(case):
        name, argv = case[0], case[1]
        directory = root / name
        directory.mkdir()
        make_inputs(directory)
        before = listing(directory)
        return name, (run_cli(argv, directory), before, listing(directory))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("name, argv, code, fragment", CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_an_exit_code_and_no_output(outcomes, name, argv, code, fragment):
    process, before, after = outcomes[name]
    lines = process.stderr.splitlines()
    assert "Traceback" not in process.stderr
    assert len(lines) == 1, process.stderr
    assert fragment in lines[0]
    assert lines[0].startswith("faithclip")
    assert process.returncode == code, process.stderr
    assert after == before, f"left behind: {sorted(after - before)}"


@pytest.mark.parametrize("name, argv, code, fragment", IN_PROCESS, ids=[case[0] for case in IN_PROCESS])
def test_more_bad_input_in_process(tmp_path, monkeypatch, capsys, name, argv, code, fragment):
    from faithclip.cli.main import main

    make_inputs(tmp_path)
    before = listing(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
    assert listing(tmp_path) == before


def test_ctrl_c_exits_130_with_one_line_and_writes_nothing(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "faithclip", "demo", "--no-audit", "--out", "demo"],
        cwd=tmp_path,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # a shell may start jobs ignoring it
    try:
        first = process.stdout.readline()  # the demo has started computing
        assert first.startswith("scene 1/"), first
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.splitlines() == ["faithclip demo: interrupted"]
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["methods"], "faithclip methods: interrupted"),
        (["evaluate", "--out", "unused"], "faithclip evaluate: interrupted; run the same command again to resume"),
    ],
)
def test_interrupt_message_says_resume_only_where_true(monkeypatch, capsys, argv, message):
    from faithclip.cli.main import main

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"faithclip.cli.{argv[0]}.run", interrupted)  # read when the parser is built
    assert main(argv) == 130
    assert capsys.readouterr().err.splitlines() == [message]


def test_check_writable_creates_nothing(tmp_path):
    from faithclip.cli.common import check_writable
    from faithclip.errors import FaithclipError

    assert check_writable(tmp_path / "new" / "deeper", "dir") == tmp_path / "new" / "deeper"
    assert check_writable(tmp_path / "new" / "out.json", "file") == tmp_path / "new" / "out.json"
    assert listing(tmp_path) == set()
    (tmp_path / "file").write_text("x")
    for path, kind in ((tmp_path / "file", "dir"), (tmp_path / "file" / "x.json", "file"), (tmp_path, "file")):
        with pytest.raises(FaithclipError):
            check_writable(path, kind)
    assert listing(tmp_path) == {"file"}


def _p1_row(method: str, passed: bool, declared: bool):
    from types import SimpleNamespace

    return SimpleNamespace(
        method=method,
        passed=passed,
        modifies_model=declared,
        modifies_input=False,
        as_dict=lambda: {"method": method, "passed": passed},
    )


@pytest.mark.parametrize("declared, code", [(True, 0), (False, 1)])
def test_verify_exits_1_only_on_an_undeclared_departure(monkeypatch, tmp_path, capsys, declared, code):
    import faithclip.audit.principles as principles
    import faithclip.equivalence as equivalence
    from faithclip.cli.main import main

    monkeypatch.setattr(equivalence, "verify_equivalence", lambda *a, **k: [])
    monkeypatch.setattr(equivalence, "format_table", lambda rows: "")
    monkeypatch.setattr(
        principles, "check_p1", lambda *a, **k: [_p1_row("ok", True, False), _p1_row("x", False, declared)]
    )
    monkeypatch.setattr(principles, "format_p1", lambda rows: "")
    monkeypatch.setattr("faithclip.report.verify_report.render_verify", lambda record: "<!doctype html>")  # stub rows
    assert main(["verify", "--out", str(tmp_path / "run")]) == code
    out = capsys.readouterr().out
    assert ("FAILED: x depart" in out) == (code == 1)
    assert ("Declared departures (not failures): x" in out) == declared
    assert json.loads((tmp_path / "run" / "verify.json").read_text())["failures"] == (
        [] if declared else ["x depart from the model's own score without declaring it"]
    )  # written whether or not a check failed


@pytest.fixture(scope="module")
def model():
    import faithclip

    return faithclip.load()


def test_output_names_are_unique_and_records_name_their_inputs(tmp_path, capsys):
    from faithclip.cli.main import main

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / folder / "x.png")
    images = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")]
    out = tmp_path / "out"
    assert main(["explain", *images, "--text", "a red triangle", "--text", "A RED TRIANGLE", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(("  ", "Report: "))]
    # explain.json (the run's index) and report.html follow the --out convention; one record per pair
    records = [json.loads(path.read_text()) for path in sorted(out.glob("*.json")) if path.name != "explain.json"]
    assert len(lines) == 4 and len(records) == 4 and len(list(out.glob("*.png"))) == 4
    pairs = {(r["image"], r["text"]) for r in records}
    assert pairs == {(image, text) for image in images for text in ("a red triangle", "A RED TRIANGLE")}
    assert {(r["method"], r["target"]) for r in records} == {("attention_eclip", "cosine")}
    pair_files = [path for path in out.iterdir() if path.name not in ("explain.json", "report.html")]
    assert len({path.stem.lower() for path in pair_files}) == 4  # distinct on case-insensitive file systems too


def test_exif_orientation_follows_the_pipeline_and_is_recorded(tmp_path, model):
    import dataclasses

    import torch

    import faithclip
    from faithclip.models.preprocess import ImagePreprocess

    stored = Image.new("RGB", (96, 64), (255, 255, 255))  # wide as stored ...
    stored.paste((220, 20, 20), (0, 0, 40, 24))  # ... with a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": upright, the photo is tall
    path = tmp_path / "phone.jpg"
    stored.save(path, "JPEG", exif=exif, quality=95)
    upright = ImageOps.exif_transpose(Image.open(path))
    assert upright.size == (64, 96)

    assert torch.equal(model.pixels(str(path)), model.pixels(upright))  # transformers' rule: applied
    ex = faithclip.explain(model, str(path), "a red square")
    assert ex.exif_orientation == {"tag": 6, "rule": "apply", "applied": True}
    assert ex.image == str(path)
    assert torch.equal(ex.map, faithclip.explain(model, upright, "a red square").map)
    as_stored_pixels = Image.fromarray(np.asarray(Image.open(path).convert("RGB")))  # no EXIF left to apply
    assert not torch.equal(ex.map, faithclip.explain(model, as_stored_pixels, "a red square").map)

    openai = dataclasses.replace(model, preprocess=ImagePreprocess.for_pipeline("openai", model.image_size))
    as_stored = faithclip.explain(openai, str(path), "a red square")  # OpenAI's rule: pixels as stored
    assert as_stored.exif_orientation == {"tag": 6, "rule": "ignore", "applied": False}
    assert torch.equal(openai.pixels(str(path)), openai.pixels(as_stored_pixels))
    assert any("EXIF orientation tag (6) is not applied" in note for note in as_stored.warnings)


def test_unknown_words_are_warned_about_and_printed(tmp_path, model, capsys):
    import faithclip
    from faithclip.cli.main import main

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    person, bus, known = faithclip.explain(model, image, ["a person", "a bus", "a red circle"])
    assert any("'person' is not in the model's vocabulary" in note for note in person.warnings)
    assert any("'bus' is not in the model's vocabulary" in note for note in bus.warnings)
    assert not any("vocabulary" in note for note in known.warnings)
    image.save(tmp_path / "img.png")
    assert (
        main(["explain", str(tmp_path / "img.png"), "--text", "a zebra and a bus", "--out", str(tmp_path / "o")]) == 0
    )
    assert "warning: 'zebra', 'bus' are not in the model's vocabulary" in capsys.readouterr().out
