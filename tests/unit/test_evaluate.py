"""The evaluation runner and ``faithclip evaluate``: resume, reproducibility, flat memory, aligned masks."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from conftest import B32_DIR, VOC_DIR, tiny_config
from faithclip.data.folders import (
    aligned_mask,
    imagenet_folder,
    open_data,
    shapes_set,
    voc_folder,
)
from faithclip.evaluation import EvalConfig, EvaluationError, Evaluator, evaluate
from faithclip.models.loading import from_hf
from faithclip.models.preprocess import ImagePreprocess
from faithclip.shapes.tokenizer import as_transformers_tokenizer, build_word_tokenizer
from faithclip.shapes.world import COLOUR_NAMES, SHAPES

FAST_METRICS = ["zeroshot", "deletion_gradeclip", "insertion_rise", "pointing_game", "energy_pointing_game"]


def tiny_shapes_clip(seed: int = 0, size: int = 32):
    """A random 2-layer CLIP on 32 px images with the shapes world's word tokenizer (end id 3)."""
    config = tiny_config(image_size=size)
    config.text_config.eos_token_id, config.text_config.bos_token_id, config.text_config.pad_token_id = 3, 1, 0
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    model.set_attn_implementation("eager")
    tokenizer = as_transformers_tokenizer(build_word_tokenizer([*SHAPES, *COLOUR_NAMES]))
    return from_hf(
        model, tokenizer, preprocess=ImagePreprocess(size=size, crop_height=size, crop_width=size), name="tiny-shapes"
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def handle():
    return tiny_shapes_clip()


def _values(results):
    """Everything computed, without timings."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results["per_image"]], results["aggregate"]


def _close(a, b, rel: float = 1e-6) -> bool:
    """Equal structure and strings, numbers equal to ``rel`` (relative to the larger magnitude)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a == a and b == b and abs(a - b) <= rel * max(abs(a), abs(b)))
    return a == b


def test_resume_after_an_interruption_gives_identical_results(handle, tmp_path, monkeypatch):
    data = shapes_set(32, 5)
    config = EvalConfig(model="tiny", data="shapes", metrics=FAST_METRICS, seed=3)
    reference = evaluate(handle, data, tmp_path / "whole", config, progress=False, report=False)
    assert reference["complete"] and len(reference["per_image"]) == 5 * 3

    calls = []
    original = Evaluator.run_case

    def interrupted(self, prepared, method, keep, *deferred):
        if len(calls) == 7:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the 8th record
        calls.append((prepared.case_id, method))
        return original(self, prepared, method, keep, *deferred)

    monkeypatch.setattr(Evaluator, "run_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(handle, data, tmp_path / "split", config, progress=False, report=False)
    records = tmp_path / "split" / "records.jsonl"
    written = [(r["case"], None if r["method"] == "-" else r["method"]) for r in map(json.loads, records.open())]
    # the records whose perturbed images were in the forward being filled are lost with it (streaming.py):
    # here the 6th (8 of its 26 images not yet scored, forwards of 32) and the 7th, which is written after it
    assert written == calls[:5] and not (tmp_path / "split" / "results.json").exists()
    with open(records, "a") as torn:
        torn.write('{"case": "scene00002", "meth')  # killed in the middle of a write

    monkeypatch.setattr(
        Evaluator, "run_case", lambda self, p, m, k, *d: (calls.append((p.case_id, m)), original(self, p, m, k, *d))[1]
    )
    resumed = evaluate(handle, data, tmp_path / "split", config, progress=False, report=False)
    assert calls[7:] == [job for job in calls[7:] if job not in written]  # nothing written was computed twice
    assert len(calls) - 7 + len(written) == 15 and set(calls) == set(calls[7:]) | set(written)
    assert _values(resumed) == _values(reference)
    assert resumed["complete"]


def test_a_run_is_extended_by_a_larger_limit_without_recomputing(handle, tmp_path, monkeypatch):
    data = shapes_set(32, 4)
    config = EvalConfig(model="tiny", data="shapes", metrics=["pointing_game", "deletion_gradeclip"], limit=2)
    evaluate(handle, data, tmp_path / "run", config, progress=False, report=False)
    calls = []
    original = Evaluator.run_case
    monkeypatch.setattr(
        Evaluator, "run_case", lambda self, p, m, k, *d: (calls.append(p.case_id), original(self, p, m, k, *d))[1]
    )
    config.limit = 4
    extended = evaluate(handle, data, tmp_path / "run", config, progress=False, report=False)
    assert sorted(set(calls)) == ["scene00002", "scene00003"] and extended["data"]["num_cases"] == 4
    monkeypatch.undo()
    whole = evaluate(handle, data, tmp_path / "whole", config, progress=False, report=False)
    assert _values(extended) == _values(whole)


def test_same_seed_same_numbers_and_a_changed_config_is_refused(handle, tmp_path):
    data = shapes_set(32, 3)
    config = EvalConfig(model="tiny", data="shapes", metrics=["deletion_gradeclip"], seed=1, batch_size=4)
    first = evaluate(handle, data, tmp_path / "a", config, progress=False, report=False)
    again = evaluate(
        handle,
        data,
        tmp_path / "b",
        EvalConfig(model="tiny", data="shapes", metrics=["deletion_gradeclip"], seed=1, batch_size=32),
        progress=False,
        report=False,
    )
    # Another batch size changes the numbers only by float rounding (BLAS blocks batches of other sizes
    # differently; measured up to 1.1e-6 relative), so it is part of the run identity: a resume with
    # another batch size is refused, naming it.
    assert _close(_values(first), _values(again), rel=1e-5)
    with pytest.raises(EvaluationError, match=r"--batch-size \(batch_size: 4 -> 32\)"):
        evaluate(handle, data, tmp_path / "a", replace(config, batch_size=32), progress=False, report=False)
    other_seed = evaluate(
        handle,
        data,
        tmp_path / "c",
        EvalConfig(model="tiny", data="shapes", metrics=["deletion_gradeclip"], seed=2),
        progress=False,
        report=False,
    )
    assert _values(first) != _values(other_seed)
    with pytest.raises(EvaluationError, match="seed"):
        evaluate(
            handle,
            data,
            tmp_path / "a",
            EvalConfig(model="tiny", data="shapes", metrics=["deletion_gradeclip"], seed=9),
            progress=False,
            report=False,
        )
    with pytest.raises(EvaluationError, match="model_fingerprint"):
        evaluate(tiny_shapes_clip(seed=1), data, tmp_path / "a", config, progress=False, report=False)
    other_scenes = shapes_set(32, 3, seed=5)
    other_scenes.name = data.name  # e.g. the world's generator changed between the two runs
    with pytest.raises(EvaluationError, match=r"\(data_fingerprint: "):
        evaluate(handle, other_scenes, tmp_path / "a", config, progress=False, report=False)


def test_outputs_schema_and_protocol_labels(handle, tmp_path):
    config = EvalConfig(
        model="tiny",
        data="shapes",
        metrics=["zeroshot", "deletion_rise", "pointing_game"],
        metric_options={"pointing_game": {"tolerance": 4}},
        examples=2,
        method_options={"attention_eclip": {"layers": 2}},
    )
    results = evaluate(handle, shapes_set(32, 3), tmp_path, config, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["schema"] == "faithclip.evaluation/3"
    for key in (
        "faithclip_version",
        "torch_version",
        "transformers_version",
        "model",
        "seed",
        "aggregate",
        "per_image",
        "metrics",
        "methods",
        "curves",
        "confidence_interval",
    ):
        assert key in saved
    assert saved["model"]["fingerprint"] == results["config"]["model_fingerprint"]
    columns = {m["name"]: m["columns"] for m in saved["metrics"]}
    assert columns["deletion_rise"]["auc"] == "deletion AUC [rise]"
    assert columns["pointing_game"]["hit"] == "pointing game [pointing, 4 px]"
    summary = saved["aggregate"]["grad_eclip"]["deletion_rise"]["auc"]
    assert summary["n"] == 3 and summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    markdown = (tmp_path / "results.md").read_text()
    assert "deletion AUC [rise] ↓" in markdown and "| grad_eclip |" in markdown
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 + 2 * 3  # a curve; per example the crop and 2 overlays
    assert len(saved["examples"]) == 2 and (tmp_path / saved["examples"][0]["image"]).is_file()
    assert [m["options"] for m in saved["methods"]] == [{}, {"layers": 2}]
    assert saved["config"]["method_options"] == {"grad_eclip": {}, "attention_eclip": {"layers": 2}}
    with pytest.raises(EvaluationError, match="not among the methods"):
        Evaluator(handle, EvalConfig(model="tiny", data="shapes", method_options={"rise": {"masks": 10}}))
    with pytest.raises(EvaluationError, match="is not an option of pointing_game; its options are tolerance"):
        Evaluator(
            handle,
            EvalConfig(
                model="tiny", data="shapes", metrics=["pointing_game"], metric_options={"pointing_game": {"radius": 3}}
            ),
        )


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def test_memory_stays_flat_over_many_images(handle, tmp_path, monkeypatch):
    samples = []
    original = Evaluator.run_case

    def measured(self, prepared, method, keep, *deferred):
        record = original(self, prepared, method, keep, *deferred)
        if method is not None:  # the method's record, not the image's chance record ('-')
            samples.append(_rss_bytes())
        return record

    monkeypatch.setattr(Evaluator, "run_case", measured)
    config = EvalConfig(
        model="tiny", data="shapes", metrics=["deletion_gradeclip", "pointing_game"], methods=["grad_eclip"], examples=0
    )
    evaluate(handle, shapes_set(32, 40), tmp_path, config, progress=False, report=False)
    assert len(samples) == 40
    growth = samples[-1] - samples[9]  # after warm-up, 30 more images
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 30 images"


# ---- data -------------------------------------------------------------------------------------------
def test_masks_go_through_the_images_resize_and_crop():
    """A rectangle drawn in the image and given as its mask stays under the mask after preprocessing."""
    image = np.full((150, 300, 3), 30, dtype=np.uint8)  # non-square, W > H
    mask = np.zeros((150, 300), dtype=bool)
    mask[40:110, 140:200] = True
    image[mask] = (250, 20, 20)
    preprocess = ImagePreprocess(size=64, crop_height=64, crop_width=64)
    crop = np.asarray(preprocess.crop_image(Image.fromarray(image))).astype(int)
    aligned = aligned_mask(mask, preprocess)
    assert aligned.shape == (64, 64)
    # resize 300x150 -> 128x64 (scale 64/150), crop x from 32: pixel centres i + 0.5 of the rectangle satisfy
    # 40 <= (i + 0.5) * 150/64 < 110 (rows 17..46) and 140 <= (j + 32 + 0.5) * 300/128 < 200 (columns 28..52)
    ys, xs = np.nonzero(aligned)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (17, 46, 28, 52)
    inside = np.zeros_like(aligned)
    inside[19:45, 30:51] = True  # the mask minus a 2-pixel rim, where bicubic resampling blends the edge
    outside = np.ones_like(aligned)
    outside[15:49, 26:55] = False  # the complement of the mask plus a 2-pixel rim
    assert (crop[inside][:, 0] > 200).all() and (crop[outside][:, 0] < 80).all()


@pytest.mark.skipif(not VOC_DIR.is_dir(), reason="../shared/reference is not available")
def test_voc_samples_load_with_masks_aligned_to_the_crop():
    data = voc_folder(VOC_DIR)
    assert [c.case_id for c in data.cases] == [
        "2011_000003:bottle",
        "2011_000003:person",
        "2011_000006:chair",
        "2011_000006:person",
        "2011_000006:sofa",
        "2011_000025:bus",
        "2011_000025:car",
    ]
    assert data.class_names[0] == "aeroplane" and len(data.class_names) == 20 and data.has_masks
    preprocess = ImagePreprocess.from_json(B32_DIR / "preprocessor_config.json")
    for item in data:
        assert item.mask.shape == (item.image.height, item.image.width)
        assert data.class_names[item.label] == item.case_id.split(":")[1]
        aligned = aligned_mask(item.mask, preprocess)
        assert aligned.shape == (224, 224)
        # nearest resize + centre crop of the label map, done independently with numpy indexing
        height, width = item.mask.shape
        rw, rh = preprocess.resized_size(width, height)
        left, top, _, _ = preprocess.crop_box(width, height)
        rows = np.floor((np.arange(top, top + 224) + 0.5) * height / rh).astype(int)
        cols = np.floor((np.arange(left, left + 224) + 0.5) * width / rw).astype(int)
        assert (aligned == item.mask[rows][:, cols]).mean() > 0.995
    assert any(item.ignore.any() for item in data)


def test_imagenet_folder_and_auto_detection(tmp_path):
    for wnid in ("n01", "n02"):
        (tmp_path / wnid).mkdir()
        Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / wnid / "a.jpg")
    (tmp_path / "class_names.txt").write_text("n02 tabby cat\nn01 goldfish\n")
    data = open_data(str(tmp_path))
    assert data.class_names == ["goldfish", "tabby cat"] and len(data.templates) == 80
    assert [c.case_id for c in data.cases] == ["n01/a.jpg", "n02/a.jpg"] and list(data)[1].label == 1
    (tmp_path / "class_names.txt").write_text("one\n")
    with pytest.raises(Exception, match="class directories"):
        imagenet_folder(tmp_path)


# ---- the command ------------------------------------------------------------------------------------
@pytest.mark.skipif(not VOC_DIR.is_dir(), reason="../shared/reference is not available")
def test_cli_evaluates_the_voc_samples_and_resumes(tmp_path, capsys):
    from faithclip.cli.main import main

    config = tiny_config(image_size=32)
    config.text_config.vocab_size, config.text_config.max_position_embeddings = 49408, 77
    config.text_config.eos_token_id, config.text_config.bos_token_id = 49407, 49406
    torch.manual_seed(0)
    model_dir = tmp_path / "model"
    transformers.CLIPModel(config).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        shutil.copy(B32_DIR / name, model_dir / name)
    argv = [
        "evaluate",
        "--model",
        str(model_dir),
        "--data",
        f"voc:{VOC_DIR}",
        "--methods",
        "grad_eclip,attention_eclip",
        "--metrics",
        "zeroshot,pointing_game,energy_pointing_game,deletion_gradeclip",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"]["num_cases"] == 7 and results["complete"]
    assert results["aggregate"]["grad_eclip"]["pointing_game"]["hit"]["n"] == 7
    assert "pointing game [pointing, 15 px] ↑" in capsys.readouterr().out
    before = (tmp_path / "run" / "records.jsonl").read_bytes()
    assert main(argv) == 0  # everything is finished: nothing is recomputed
    assert (tmp_path / "run" / "records.jsonl").read_bytes() == before
    assert main(argv[:-1] + [str(tmp_path / "run"), "--seed", "5"]) == 2  # a different run in the same directory
    assert main(["evaluate", "--metrics", "nonsense", "--out", str(tmp_path / "x")]) == 2


def test_model_fingerprint_is_exact_and_independent_of_threads(handle):
    from faithclip.evaluation import model_fingerprint

    threads = torch.get_num_threads()
    first = model_fingerprint(handle)
    torch.set_num_threads(2)
    try:
        assert model_fingerprint(handle) == first
    finally:
        torch.set_num_threads(threads)
    model = transformers.CLIPModel(handle.model.config).eval()
    model.load_state_dict(handle.model.state_dict())
    assert model_fingerprint(from_hf(model)) == first
    with torch.no_grad():
        weight = model.visual_projection.weight
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(1.0))  # one ulp
    assert model_fingerprint(from_hf(model)) != first


# ---- chance levels and curve bands ------------------------------------------------------------------
def test_curve_band_equals_a_literal_bootstrap_and_collapses_on_identical_curves():
    """The weighted form of the band against the slow literal one (each resample's images, their NaN-aware
    mean per point, percentiles), drawing the same resamples; identical curves give a band equal to them."""
    from faithclip.evaluation import CI_RESAMPLES, curve_band

    rng = np.random.default_rng(3)
    rows = rng.normal(size=(7, 5))
    rows[2, 1] = rows[4, 1] = np.nan  # undefined points are left out of a resample's mean
    rows[:, 4] = np.nan
    rows[0, 4] = 1.0  # a point one image defines has no band
    band = curve_band(rows.tolist(), seed=11, chunk=300)
    generator = np.random.default_rng(11)
    means = []
    for start in range(0, CI_RESAMPLES, 300):
        for pick in generator.integers(0, 7, size=(min(300, CI_RESAMPLES - start), 7)):
            resample = rows[pick]  # (7, 5)
            means.append([np.mean(col[np.isfinite(col)]) if np.isfinite(col).any() else np.nan for col in resample.T])
    means = np.array(means)
    for point in range(4):
        finite = means[:, point][np.isfinite(means[:, point])]
        assert band["low"][point] == pytest.approx(np.percentile(finite, 2.5), rel=1e-12)
        assert band["high"][point] == pytest.approx(np.percentile(finite, 97.5), rel=1e-12)
    assert band["low"][4] is None and band["high"][4] is None
    same = curve_band([[0.5, 0.25, 0.0]] * 6, seed=0)
    assert same == {"low": [0.5, 0.25, 0.0], "high": [0.5, 0.25, 0.0]}


def test_pointing_games_report_their_chance_level_from_the_data_alone(handle, tmp_path):
    """The '-' record of each image holds the image-centre hit and a uniform map's energy; their means equal
    the same quantities computed here from the masks of the scored crops (distance of the centre pixel to
    the nearest object pixel, object share of the pixels)."""
    from faithclip.evaluation import prepare

    data = shapes_set(32, 6)
    config = EvalConfig(
        model="tiny",
        data="shapes",
        metrics=["pointing_game", "energy_pointing_game"],
        methods=["grad_eclip"],
        examples=0,
    )
    evaluate(handle, data, tmp_path, config, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    hits, shares = [], []
    for item in data:
        mask = prepare(handle, item).mask
        if mask is None:
            continue
        height, width = mask.shape
        ys, xs = np.nonzero(mask.numpy())
        hits.append(float(np.min(np.hypot(ys - height // 2, xs - width // 2)) <= 15))
        shares.append(mask.numpy().sum() / mask.numel())
    chance = saved["aggregate"]["-"]
    assert chance["pointing_game"]["hit"]["n"] == len(hits) > 0
    assert chance["pointing_game"]["hit"]["mean"] == pytest.approx(np.mean(hits))
    assert chance["energy_pointing_game"]["energy"]["mean"] == pytest.approx(np.mean(shares))
    assert {m["name"]: m["chance"] for m in saved["metrics"]} == {
        "pointing_game": "the image centre",
        "energy_pointing_game": "a uniform map",
    }
    assert saved["complete"] and "grad_eclip" in saved["aggregate"]
    markdown = (tmp_path / "results.md").read_text()
    assert "| chance (the image centre; a uniform map) |" in markdown
