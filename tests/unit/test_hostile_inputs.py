"""Hostile inputs (issue 25): every bad image, model, option value or output path is ONE line on stderr and
its exit code, and nothing that is not faithclip's is replaced.

The corpus is a table: (input, command line, exit code, words the one line must hold). Each input is run
against every command that reads that kind of input, so a new command is covered by adding it to
``IMAGE_COMMANDS`` / ``MODEL_COMMANDS``. Commands run in this process through ``faithclip.cli.main.main``
(the subprocess level is covered by test_cli_errors.py). No test touches a real device file: outputs are
tried on a FIFO, symlinks and an injected ENOSPC (``os.fsync`` failing for one file, as a full disk
reports a delayed write).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import faithclip
from faithclip.cli.main import main
from faithclip.errors import FaithclipError
from faithclip.models.loading import SHIPPED_DIR

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = ("--text", "red circle")


# ---- the corpus -------------------------------------------------------------------------------------
def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says ``width`` x ``height`` and which holds no pixel data: decoding it would
    allocate width*height*3 bytes, so only a check made on the header keeps memory flat."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def write_models(root: Path) -> None:
    """Model inputs that must be refused: weights that do not fit config.json, a missing tensor, integer
    weights, a file that is no pickle, a pickle of other Python objects."""
    shipped = SHIPPED_DIR / "shapes-clip"
    for name in ("mismatched", "missing-tensor", "int-weights"):
        shutil.copytree(shipped, root / name)
    config = json.loads((root / "mismatched" / "config.json").read_text())
    config["vision_config"]["intermediate_size"] = 2 * config["vision_config"]["intermediate_size"]
    (root / "mismatched" / "config.json").write_text(json.dumps(config))
    weights = load_file(root / "missing-tensor" / "model.safetensors")
    del weights["vision_model.encoder.layers.0.mlp.fc1.weight"]
    save_file(weights, root / "missing-tensor" / "model.safetensors", metadata={"format": "pt"})
    weights = load_file(root / "int-weights" / "model.safetensors")
    weights["vision_model.encoder.layers.0.mlp.fc1.weight"] = weights[
        "vision_model.encoder.layers.0.mlp.fc1.weight"
    ].to(torch.int32)
    save_file(weights, root / "int-weights" / "model.safetensors", metadata={"format": "pt"})
    (root / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 4)
    torch.save({"weights": {"w": torch.zeros(2)}, "path": Path("x")}, root / "objects.pt")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(root / "img.png")
    os.symlink("loop-b", root / "loop-a")
    os.symlink("loop-a", root / "loop-b")
    os.mkfifo(root / "fifo.in")
    (root / "adir").mkdir()
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    png_header_only(root / "huge.png", 20000, 20000)
    (root / "names.txt").write_text("red circle\nblue square\n")
    data = root / "data"  # an ImageNet-style folder with one corrupt image, the LAST case
    for label in range(2):
        (data / f"c{label}").mkdir(parents=True)
        for index in range(2):
            pixels = np.random.default_rng(10 * label + index).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / f"c{label}" / f"{index}.png")
    (data / "c1" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\1" * 40)
    (data / "class_names.txt").write_text("c0 red circle\nc1 blue square\n")
    write_models(root)
    return root


# (input, words the one line holds): inputs given where a command reads an IMAGE
IMAGE_INPUTS = [
    ("loop-a", "loop-a is a symlink loop"),
    ("fifo.in", "fifo.in is a FIFO, not an image file"),
    ("adir", "adir is a directory, not an image file"),
    ("corrupt.png", "corrupt.png"),
    ("missing.png", "image not found: missing.png"),
    ("huge.png", "400,000,000 pixels, more than the limit of 89,478,485 pixels (a guard against decompression bombs)"),
]
# every command that reads image files: IMAGE is replaced by the input
IMAGE_COMMANDS = {
    "explain": ["explain", "IMAGE", *TEXT, "--out", "out-explain"],
    "verify": ["verify", "IMAGE", *TEXT, "--no-p1", "--no-progress"],
    "audit": ["audit", "--images", "IMAGE", "--class-names", "names.txt", "--scenes", "2"],
}
# (input, words): inputs given where a command reads a MODEL
MODEL_INPUTS = [
    ("mismatched", "the weights do not fit its config.json: vision_model.encoder.layers.0.mlp.fc1"),
    (
        "missing-tensor",
        "the weights lack 1 tensor(s) its config.json needs (vision_model.encoder.layers.0.mlp.fc1.weight)",
    ),
    ("int-weights", "holds I32 values; faithclip expected floating-point weights"),
    ("garbage.pt", "its bytes are not a PyTorch pickle"),
    ("objects.pt", "it holds Python objects besides tensors (Unsupported global: GLOBAL pathlib.PosixPath"),
]
MODEL_COMMANDS = {
    "explain": ["explain", "img.png", *TEXT, "--model", "MODEL", "--out", "out-explain"],
    "verify": ["verify", "img.png", *TEXT, "--no-p1", "--no-progress", "--model", "MODEL"],
    "audit": ["audit", "--model", "MODEL", "--scenes", "2"],
    "evaluate": ["evaluate", "--model", "MODEL", "--data", "shapes", "--count", "2", "--no-progress", "--out", "run"],
    "check": ["check", "--model", "MODEL", "--methods", "grad_eclip"],
}
EVALUATE = ["evaluate", "--data", "shapes", "--count", "2", "--no-progress", "--out", "run"]
# (id, command line, exit code, words): options, values and outputs
OTHER_CASES = [
    (
        "image-over-max-pixels",
        ["explain", "img.png", *TEXT, "--max-pixels", "100"],
        2,
        "img.png has 4,096 pixels, more than the limit of 100 pixels",
    ),
    (
        "layers-on-occlusion",
        ["explain", "img.png", *TEXT, "--methods", "occlusion", "--layers", "2"],
        2,
        "--layers is not an option of occlusion; its options are window, stride, fill, baseline, segments, batch_size.",
    ),
    # layers counts last layers; grad_cam and rollout take an index (issue 24: this ended in "unexpected keyword")
    (
        "layers-on-grad-cam",
        ["explain", "img.png", *TEXT, "--method", "grad_cam", "--layers", "2"],
        2,
        "--layers is not an option of grad_cam; its options are layer (layers: a count of last layers; layer: the "
        "index of one layer).",
    ),
    (
        "layers-on-rollout",
        ["explain", "img.png", *TEXT, "--method", "rollout", "--layers", "2"],
        2,
        "--layers is not an option of rollout; its options are start_layer (layers: a count of last layers; "
        "start_layer: the index of the first of the layers up to the last).",
    ),
    (
        "other-equal-to-text",
        ["explain", "img.png", *TEXT, "--target", "probability", "--other", "red circle"],
        2,
        "the other text 'red circle' (--other, others=) is an explained text itself",
    ),
    (
        "layers-banana",
        [*EVALUATE, "--method-option", "grad_eclip.layers=banana"],
        2,
        "grad_eclip.layers='banana': grad_eclip's layers must be a whole number.",
    ),
    (
        "layers-99",
        [*EVALUATE, "--method-option", "grad_eclip.layers=99"],
        2,
        "grad_eclip.layers=99: grad_eclip's layers must be at most 4",
    ),
    (
        "rise-masks-0",
        [*EVALUATE, "--methods", "rise", "--method-option", "rise.masks=0"],
        2,
        "rise.masks=0: rise's masks must be a whole number of at least 1.",
    ),
    (
        "tolerance-negative",
        [*EVALUATE, "--metrics", "pointing_game", "--option", "pointing_game.tolerance=-5"],
        2,
        "pointing_game.tolerance=-5: pointing_game's tolerance must be a distance in pixels of at least 0.",
    ),
    (
        "steps-below-every",
        [*EVALUATE, "--metrics", "deletion_gradeclip", "--option", "deletion_gradeclip.steps=8"],
        2,
        "deletion_gradeclip.steps=8, deletion_gradeclip.every=10: deletion_gradeclip's every must be at most steps",
    ),
    (
        "tolerance-abc",
        [*EVALUATE, "--metrics", "pointing_game", "--option", "pointing_game.tolerance=abc"],
        2,
        "pointing_game.tolerance='abc': pointing_game's tolerance must be a number.",
    ),
    (
        "tolerance-nan",
        [*EVALUATE, "--metrics", "pointing_game", "--option", "pointing_game.tolerance=NaN"],
        2,
        "must be a finite number",
    ),
    (
        "method-option-choice",
        [*EVALUATE, "--method-option", "grad_eclip.relu=banana"],
        2,
        "grad_eclip.relu='banana': grad_eclip's relu must be one of per_layer, after_sum, none.",
    ),
    (
        "method-option-unknown",
        [*EVALUATE, "--method-option", "grad_eclip.window=3"],
        2,
        "grad_eclip.window is not an option of grad_eclip; its options are layers, use_lambda, relu",
    ),
    (
        "corrupt-image-in-folder",
        [
            "evaluate",
            "--data",
            "imagenet:data",
            "--methods",
            "grad_eclip",
            "--metrics",
            "zeroshot",
            "--no-progress",
            "--out",
            "run",
        ],
        2,
        "data/c1/1.png is not an image PIL can read",
    ),
    (
        "check-callable-without-arguments",
        ["check", "--methods", "os:getcwd"],
        2,
        "os:getcwd takes (), but faithclip calls a METHOD given as module:function as function(model, pixels, texts)",
    ),
    ("json-is-a-directory", ["bench", "--json", "adir"], 2, "--json adir is a directory"),
    ("audit-json-is-a-directory", ["audit", "--json", "adir"], 2, "--json adir is a directory"),
    ("verify-json-is-a-symlink-loop", ["verify", "--json", "loop-a"], 2, "loop-a: it is a symlink loop"),
    ("demo-out-is-a-symlink-loop", ["demo", "--out", "loop-a"], 2, "--out loop-a is a symlink to nothing"),
    ("demo-out-is-a-file", ["demo", "--out", "img.png"], 2, "--out img.png is a file, not a directory"),
    (
        "train-out-is-a-file",
        ["train-shapes", "--out", "img.png", "--minutes", "1"],
        2,
        "--out img.png is a file, not a directory",
    ),
    ("bench-out-is-a-symlink-loop", ["bench", "--out", "loop-a"], 2, "--out loop-a is a symlink to nothing"),
]

CASES = (
    [
        (f"{command}-image-{name}", [name if arg == "IMAGE" else arg for arg in argv], 2, words)
        for command, argv in IMAGE_COMMANDS.items()
        for name, words in IMAGE_INPUTS
    ]
    + [
        (f"{command}-model-{name}", [name if arg == "MODEL" else arg for arg in argv], 2, words)
        for command, argv in MODEL_COMMANDS.items()
        for name, words in MODEL_INPUTS
    ]
    + OTHER_CASES
)


def listing(root: Path) -> dict[str, str]:
    """Every entry under ``root`` with what it is (a FIFO stays a FIFO, a link a link)."""
    kinds = {}
    for path in sorted(root.rglob("*")):
        kind = (
            "link"
            if path.is_symlink()
            else "fifo"
            if path.is_fifo()
            else "dir"
            if path.is_dir()
            else f"file {path.stat().st_size}"
        )
        kinds[str(path.relative_to(root))] = kind
    return kinds


def one_line(capsys) -> str:
    """The one error line on stderr (a deprecated spelling's one notice line aside: ``--json FILE``, the
    only way to name an output file, is kept for a release and its file-kind checks with it)."""
    err = capsys.readouterr().err
    lines = [
        line for line in err.splitlines() if line.strip() and "is deprecated and goes in the next release" not in line
    ]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("name, argv, code, words", CASES, ids=[case[0] for case in CASES])
def test_hostile_input_is_one_line_its_exit_code_and_nothing_written(
    corpus, monkeypatch, capsys, name, argv, code, words
):
    monkeypatch.chdir(corpus)
    before = listing(corpus)
    assert main(argv) == code
    line = one_line(capsys)
    assert line.startswith(f"faithclip {argv[0]}: error: ") and words in line, line
    assert listing(corpus) == before  # no folder, no half-written file, no input replaced


# ---- outputs: written through, never replaced -------------------------------------------------------
def test_a_symlinked_output_is_written_through_and_stays_a_link(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real.json").write_text("old\n")
    os.symlink("real.json", tmp_path / "link.json")
    assert main(["audit", "--scenes", "2", "--map-images", "1", "--json", "link.json"]) == 0
    assert (tmp_path / "link.json").is_symlink() and os.readlink(tmp_path / "link.json") == "real.json"
    assert json.loads((tmp_path / "real.json").read_text())["model"] == "shapes-clip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "real.json"]  # no temporary file left


def test_a_fifo_output_is_written_into_when_read_and_refused_when_nobody_reads(tmp_path, monkeypatch, capsys):
    import threading

    from faithclip.files import OutputError, write_atomic

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="it is a FIFO that no process is reading"):
        write_atomic(fifo, b"{}")
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    while True:  # the reader has opened its end once a non-blocking writer can open
        try:
            write_atomic(fifo, b'{"a": 1}')
            break
        except OutputError:
            continue
    reader.join(timeout=10)
    assert received == [b'{"a": 1}'] and fifo.is_fifo()  # written into, still a FIFO
    monkeypatch.chdir(tmp_path)
    import faithclip.audit.run as audit_run

    def no_work(*args, **kwargs):
        raise AssertionError("the audit ran before its output was checked")

    monkeypatch.setattr(audit_run, "run_audit", no_work)  # the refusal comes before any work
    assert main(["audit", "--scenes", "2", "--map-images", "1", "--json", "out.fifo"]) == 2
    assert "cannot write out.fifo: it is a FIFO that no process is reading" in capsys.readouterr().err
    assert fifo.is_fifo()


def test_a_fifo_checked_before_the_work_stays_open_for_its_reader(tmp_path):
    """check_writable opens a read FIFO and holds it: closing the probe would end the reader's input
    (EOF) before the output is written. The reader receives the whole output written later."""
    import threading

    from faithclip.cli.common import check_writable
    from faithclip.files import OutputError, write_atomic

    fifo = tmp_path / "late.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    while True:
        try:
            check_writable(fifo, "file", "--json")
            break
        except FaithclipError:
            continue
    reader.join(timeout=0.3)
    assert reader.is_alive() and received == []  # the probe did not close the FIFO: no EOF yet
    write_atomic(fifo, b'{"late": true}')
    reader.join(timeout=10)
    assert received == [b'{"late": true}']
    with pytest.raises(OutputError, match="no process is reading"):  # the held end was closed after writing
        write_atomic(fifo, b"{}")


def test_dash_writes_to_standard_output(tmp_path, capfd):
    from faithclip.files import write_atomic

    write_atomic("-", b'{"to": "stdout"}\n')
    assert capfd.readouterr().out.endswith('{"to": "stdout"}\n')


def full_disk_for(monkeypatch, fragment: str, after: int = 0) -> list:
    """``os.fsync`` fails with ENOSPC for files whose path holds ``fragment`` once ``after`` of them synced,
    as a full disk reports a delayed write. Returns the list of failed paths."""
    real = os.fsync
    seen, failed = [], []

    def fsync(descriptor: int) -> None:
        path = os.readlink(f"/proc/self/fd/{descriptor}")
        if fragment in path:
            seen.append(path)
            if len(seen) > after:
                failed.append(path)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    return failed


def test_disk_full_in_explain_puts_every_output_back_as_it_was(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(corpus)
    out = tmp_path / "explained"
    command = ["explain", "img.png", *TEXT, "--out", str(out), "--no-progress"]
    assert main(command) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    capsys.readouterr()
    failed = full_disk_for(monkeypatch, "report.html")  # the last file written
    assert main(command) == 2
    assert failed
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "cannot write" in line and "report.html: No space left on device (ENOSPC)" in line
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # the old outputs, no temporaries


def test_disk_full_in_evaluate_keeps_whole_records_and_resumes(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    command = [
        "evaluate",
        "--data",
        "shapes",
        "--count",
        "3",
        "--methods",
        "grad_eclip",
        "--metrics",
        "zeroshot",
        "--no-progress",
        "--out",
        str(out),
    ]
    with monkeypatch.context() as patch:
        failed = full_disk_for(patch, "records.jsonl", after=2)
        assert main(command) == 2
    assert failed
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert "records.jsonl: No space left on device (ENOSPC)" in line
    assert "run the same command again to resume" in line
    lines = (out / "records.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == 2 and all(json.loads(line) for line in lines[:-1])  # 2 whole records
    with monkeypatch.context() as patch:  # the results set: nothing half-published, no staging folder left
        failed = full_disk_for(patch, ".results-staging")
        assert main(command) == 2
    assert failed and not [p for p in out.iterdir() if p.name.startswith(".results-")]
    assert "run the same command again to resume" in capsys.readouterr().err
    assert main(command) == 0  # space freed: the same command finishes
    results = json.loads((out / "results.json").read_text())
    assert results["aggregate"]["-"]["zeroshot"]["top1"]["n"] == 3


# ---- record values ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, words",
    [
        ("7.5", "pointing_game.hit is 7.5, outside its range (0 or 1)"),
        ('"yes"', 'pointing_game.hit is "yes", not a number'),
        ("NaN", "NaN in a value"),
        ("-Infinity", "-Infinity in a value"),
    ],
)
def test_a_hand_edited_record_value_is_damage_that_repair_recomputes(tmp_path, capsys, value, words):
    out = tmp_path / "run"
    command = [
        "evaluate",
        "--data",
        "shapes",
        "--count",
        "3",
        "--methods",
        "grad_eclip",
        "--metrics",
        "pointing_game",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(command) == 0
    first = json.loads((out / "results.json").read_text())["aggregate"]["grad_eclip"]["pointing_game"]["hit"]
    lines = (out / "records.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    lines[1] = json.dumps(record).replace(f'"hit": {record["values"]["pointing_game"]["hit"]}', f'"hit": {value}')
    assert value in lines[1]
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(command) == 2
    line = one_line(capsys)
    assert f"records.jsonl:2: {words}" in line and "--repair" in line
    assert main([*command, "--repair"]) == 0
    again = json.loads((out / "results.json").read_text())["aggregate"]["grad_eclip"]["pointing_game"]["hit"]
    assert again["n"] == first["n"] == 3 and again["mean"] == first["mean"]  # a deterministic rerun of the same case


# ---- the Python API ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return faithclip.load("shapes-clip")


@pytest.mark.parametrize(
    "call, words",
    [
        (
            lambda m, image: faithclip.explain("shapes-clip", image, "red circle"),
            "model must be a loaded model, not its name",
        ),
        (lambda m, image: faithclip.explain(m, image, None), "no text given"),
        (lambda m, image: faithclip.explain(m, image, []), "no text given"),
        (lambda m, image: faithclip.explain(m, [], "red circle"), "no image given"),
        (
            lambda m, image: faithclip.explain(m, image, "red circle", target="probability", others="a dog"),
            "others must be a list of texts, e.g. others=['a dog']",
        ),
        (
            lambda m, image: faithclip.explain(m, image, "red circle", target="contrast", others=["red circle"]),
            "is an explained text itself",
        ),
        (
            lambda m, image: faithclip.explain(m, image, "red circle", "occlusion", layers=2),
            "layers is not an option of occlusion; its options are window, stride, fill, baseline, segments, batch_size.",
        ),
        (
            lambda m, image: faithclip.explain(m, image, "red circle", "grad_eclip", layers="banana"),
            "grad_eclip's layers must be a whole number",
        ),
    ],
    ids=[
        "name",
        "text-none",
        "text-empty",
        "no-image",
        "others-string",
        "other-is-text",
        "layers-occlusion",
        "layers-banana",
    ],
)
def test_the_api_checks_its_arguments_with_the_cli_messages(model, call, words):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    with pytest.raises(FaithclipError) as caught:
        call(model, image)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_a_prompt_longer_than_the_context_is_truncated_with_a_warning(model):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    with pytest.warns(UserWarning, match="text truncated to the model's context of"):
        explanation = faithclip.explain(model, image, "red " * 100)
    assert any("truncated" in note for note in explanation.warnings)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(corpus, monkeypatch):
    """Pillow's default limit; the 20000 x 20000 header is refused without decoding (it holds no pixels)."""
    from faithclip.models.images import decode_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    with pytest.raises(FaithclipError, match="--max-pixels N"):
        decode_image(corpus / "huge.png")
    Image.MAX_IMAGE_PIXELS = 4096
    assert decode_image(corpus / "img.png").size == (64, 64)  # exactly at the limit: read
    Image.MAX_IMAGE_PIXELS = 4095
    with pytest.raises(FaithclipError, match="64 x 64 = 4,096 pixels, more than the limit of 4,095"):
        decode_image(corpus / "img.png")


def test_option_choices_are_the_methods_own():
    """The registry refuses a word outside an option's set before any work; its sets are the methods'."""
    from faithclip.methods.clip_surgery import REDUNDANT
    from faithclip.methods.common import LAMBDA_QK, LAMBDA_SPANS
    from faithclip.methods.legrad import POOLINGS
    from faithclip.methods.official.vit import RESIDUALS
    from faithclip.registry import OPTION_CHOICES

    assert OPTION_CHOICES["lambda_span"] == LAMBDA_SPANS and OPTION_CHOICES["lambda_qk"] == LAMBDA_QK
    assert OPTION_CHOICES["qk"] == LAMBDA_QK and OPTION_CHOICES["pooling"] == POOLINGS  # qk: lambda_qk's old name
    assert OPTION_CHOICES["residual"] == RESIDUALS and OPTION_CHOICES["redundant"] == REDUNDANT
    import faithclip.methods.common as common

    for word in OPTION_CHOICES["relu"]:  # every word the registry lets through is one combine_layers takes
        common.combine_layers([__import__("torch").ones(1, 2)], word)


def test_a_killed_writers_backup_and_temporary_are_swept_by_the_next_write(tmp_path):
    """SIGKILL leaves ``.NAME.old-PID`` (the transaction's hard link) and ``.NAME.PID.*.tmp`` behind; the
    next write of NAME removes those of processes that no longer run and keeps a live process's."""
    import subprocess
    import sys

    from faithclip.files import all_or_nothing, write_atomic

    target = tmp_path / "verify.json"
    target.write_bytes(b"old")
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    killed.wait()  # its pid now names no process
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = [tmp_path / f".verify.json.old-{killed.pid}", tmp_path / f".verify.json.{killed.pid}.ab12cd.tmp"]
        kept = [
            tmp_path / f".verify.json.old-{live.pid}",
            tmp_path / f".verify.json.{live.pid}.ef34gh.tmp",
            tmp_path / ".other.json.old-1",
            tmp_path / f".verify.json.old-{killed.pid}x",
        ]
        for path in gone + kept:
            path.write_bytes(b"left")
        with all_or_nothing():
            write_atomic(target, b"new")
        assert target.read_bytes() == b"new"
        assert [p.name for p in gone if p.exists()] == []
        assert [p.name for p in kept if not p.exists()] == []
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name] + [p.name for p in kept])
    finally:
        live.kill()
        live.wait()


def test_an_image_over_the_pixel_limit_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """The size comes from the file's header: a 30 x 20 image over --max-pixels 500 (600 pixels; under
    Pillow's own refusal at twice the limit) is one line before any model is built."""
    import faithclip.cli.explain as explain_cli

    Image.new("RGB", (30, 20)).save(tmp_path / "wide.png")

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the image was checked")

    monkeypatch.setattr(explain_cli, "load_model", no_model)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # main sets it: put it back afterwards
    assert (
        main(
            [
                "explain",
                str(tmp_path / "wide.png"),
                "--text",
                "x",
                "--max-pixels",
                "500",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "is 30 x 20 = 600 pixels, more than the limit of 500 pixels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
