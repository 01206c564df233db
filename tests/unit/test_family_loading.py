"""``--model`` picks the family from ``config.model_type`` for every way a model arrives: shipped names,
directories, and hub ids (from the local hub cache, offline)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import faithclip
from blip_fixtures import save_random_blip
from faithclip.models.loading import SHIPPED_DIR
from faithclip.numerics import rounding_rtol

STAND_INS = {"shapes-clip": "clip", "shapes-vit": "vit", "shapes-siglip": "siglip"}


@pytest.mark.parametrize("name, family", sorted(STAND_INS.items()))
def test_shipped_names_and_their_directories_load_as_their_family(name, family):
    by_name = faithclip.load(name)
    by_directory = faithclip.load(SHIPPED_DIR / name)
    assert by_name.family.name == by_directory.family.name == family
    assert json.loads((SHIPPED_DIR / name / "config.json").read_text())["model_type"] == family


def hub_snapshot(cache: Path, repo: str, source: Path) -> None:
    """Lay ``source`` out as the hub cache holds a downloaded repository: models--org--name/snapshots/<rev>/."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    revision = "0" * 40
    shutil.copytree(source, folder / "snapshots" / revision)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)


def test_hub_ids_from_the_cache_load_as_their_family_offline(tmp_path):
    cache = tmp_path / "hub"
    hub_snapshot(cache, "faithclip-test/shapes-vit", SHIPPED_DIR / "shapes-vit")
    hub_snapshot(cache, "faithclip-test/shapes-siglip", SHIPPED_DIR / "shapes-siglip")
    hub_snapshot(cache, "faithclip-test/tiny-blip", save_random_blip(tmp_path / "blip", image_size=64))
    script = (
        "import faithclip, numpy as np\n"
        "from PIL import Image\n"
        "image = Image.fromarray(np.full((80, 96, 3), 128, np.uint8))\n"
        "for repo, text in (('faithclip-test/shapes-vit', 'a red circle'), ('faithclip-test/shapes-siglip', 'a red circle'),"
        " ('faithclip-test/tiny-blip', 'a dog')):\n"
        "    handle = faithclip.load(repo)\n"
        "    ex = faithclip.explain(handle, image, text)\n"
        "    print(repo, handle.family.name, ex.target, abs(ex.score - ex.model_score) / max(abs(ex.score), 1.0))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split() for line in done.stdout.splitlines()]
    assert [(repo, family, target) for repo, family, target, _ in lines] == [
        ("faithclip-test/shapes-vit", "vit", "logit"),
        ("faithclip-test/shapes-siglip", "siglip", "logit"),
        ("faithclip-test/tiny-blip", "blip", "cosine"),
    ]
    assert all(float(gap) <= rounding_rtol("float32") for *_, gap in lines)  # P1: the model's own, to rounding


@pytest.mark.parametrize(
    "command, says",
    [
        (["check", "--methods", "clip_surgery"], "method 'clip_surgery' is not available for vit models"),
        (
            ["evaluate", "--data", "shapes", "--methods", "clip_surgery", "--limit", "1"],
            "method 'clip_surgery' is not available for vit models",
        ),
        (
            ["evaluate", "--data", "DOGS", "--methods", "attention_eclip", "--limit", "1"],
            "must be this classifier's id2label labels",
        ),
    ],
)
def test_what_a_family_cannot_run_is_refused_in_one_line_before_any_work(command, says, tmp_path, capsys):
    """evaluate and check run on every family; a method the family does not support, or a data set whose
    classes are not the classifier's own, is one line and exit 2, with no output folder."""
    from PIL import Image

    from faithclip.cli.main import main

    (tmp_path / "dogs" / "dog").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 10, 10)).save(tmp_path / "dogs" / "dog" / "one.png")
    command = [str(tmp_path / "dogs") if part == "DOGS" else part for part in command]
    code = main([*command, "--model", "shapes-vit", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and says in error[0], error
    assert not (tmp_path / "out").exists()


def test_audit_of_a_family_without_a_published_pipeline_says_so(tmp_path, capsys):
    from faithclip.audit.run import AuditSettings, run_audit
    from faithclip.cli.main import main
    from faithclip.report.audit_report import format_audit

    assert main(["audit", "--model", "shapes-siglip", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no published Grad-ECLIP pipeline exists for siglip models" in error[0]
    assert not (tmp_path / "out").exists()
    settings = AuditSettings(
        scenes=6,
        ladder=True,
        p2_scenes=4,
        p2_ladders=1,
        p2_rungs=3,
        ladder_deletion_steps=2,
        methods=("attention_eclip",),
        resamples=20,
    )
    results = run_audit(faithclip.load("shapes-siglip"), settings)  # P2 still runs: it needs no pipeline
    assert "arms" not in results and results["p2"]["methods"] == ["attention_eclip"]
    assert "departure not measured" in format_audit(results)
