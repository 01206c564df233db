"""``faithclip check``: every detector fires on a constructed violation and stays quiet on a clean method;
the registered methods' flags are verified as claims; a plugin from another library is checked end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import faithclip
from faithclip.audit.check import CheckSettings, check_claims, check_p1, check_sanity, check_text, resolve_method
from faithclip.methods.external import callable_method

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]
SETTINGS = CheckSettings(sanity_scenes=6, text_scenes=6, resamples=200)


@pytest.fixture(scope="module")
def shapes():
    return faithclip.load()


def gradient_maps(model, pixels, texts):
    """A clean method: |d cos / d pixels| of the model's own forward on its own input, per text."""
    text = F.normalize(model.encode_text(model.tokens(texts)), dim=-1).detach()
    maps = []
    for k in range(text.shape[0]):
        variable = pixels.detach().clone().requires_grad_(True)
        (F.normalize(model.encode_image(variable), dim=-1) @ text[k]).sum().backward()
        maps.append(variable.grad.abs().sum(dim=1))  # (B, H, W)
    return torch.stack(maps, dim=1)  # (B, K, H, W)


def swaps_forward(model, pixels, texts):
    mlp = model.model.vision_model.encoder.layers[1].mlp
    mlp.forward = lambda hidden: torch.zeros_like(hidden)  # instance attribute: swapped ...
    try:
        return gradient_maps(model, pixels, texts)
    finally:
        del mlp.forward  # ... and restored


def edits_weight(model, pixels, texts):
    weight = model.model.vision_model.encoder.layers[0].self_attn.q_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(0.5)
    try:
        return gradient_maps(model, pixels, texts)
    finally:
        with torch.no_grad():
            weight.copy_(saved)  # bit-exact restore


def leaves_hook(model, pixels, texts):
    model.model.vision_model.encoder.layers[2].register_forward_hook(lambda module, args, output: None)
    return gradient_maps(model, pixels, texts)


def resizes_input(model, pixels, texts):
    big = F.interpolate(pixels, scale_factor=2, mode="bilinear", align_corners=False)
    text = F.normalize(model.encode_text(model.tokens(texts)), dim=-1).detach()
    variable = big.requires_grad_(True)
    embeds = model.model.get_image_features(pixel_values=variable, interpolate_pos_encoding=True).pooler_output
    (F.normalize(embeds, dim=-1) @ text.T).sum().backward()
    grid = variable.grad.abs().sum(dim=1)  # (B, 2H, 2W)
    return F.avg_pool2d(grid[:, None], 2)[:, 0][:, None].expand(-1, len(texts), -1, -1)  # (B, K, H, W)


def ignores_text(model, pixels, texts):
    maps = gradient_maps(model, pixels, texts[:1])  # the first text's map for every text
    return maps.expand(-1, len(texts), -1, -1).clone()


def ignores_weights(model, pixels, texts):
    brightness = pixels.sum(dim=1)  # (B, H, W): the input alone, whatever the model learned
    return brightness[:, None].expand(-1, len(texts), -1, -1).clone()


def p1(shapes, function, name):
    spec = callable_method(function, name)
    result, findings = check_p1(shapes, spec, "image", SETTINGS)
    return result, findings, check_claims(spec, findings)


def kinds(findings, severity="departure"):
    return {f.kind for f in findings if f.severity == severity}


def test_clean_method_passes_every_detector(shapes):
    result, findings, claims = p1(shapes, gradient_maps, "clean")
    assert result.verdict == "pass" and claims.verdict == "pass", result.evidence
    assert not [f for f in findings if f.severity != "note"]
    assert check_text(shapes, callable_method(gradient_maps, "clean"), SETTINGS).verdict == "pass"
    assert check_sanity(shapes, callable_method(gradient_maps, "clean"), SETTINGS).verdict != "fail"


@pytest.mark.parametrize(
    "function, expected, where",
    [
        (swaps_forward, {"forward_swapped", "embedding_not_the_models"}, "vision_model.encoder.layers.1.mlp"),
        (
            edits_weight,
            {"weight_edited", "embedding_not_the_models"},
            "vision_model.encoder.layers.0.self_attn.q_proj.weight",
        ),
        (leaves_hook, {"hook_left"}, "vision_model.encoder.layers.2"),
        (resizes_input, {"input_size"}, "vision_model.embeddings.patch_embedding"),
    ],
)
def test_each_p1_detector_fires_and_names_the_place(shapes, function, expected, where):
    try:
        result, findings, claims = p1(shapes, function, function.__name__)
    finally:
        for layer in shapes.model.vision_model.encoder.layers:
            layer._forward_hooks.clear()  # the hook the violation left behind
    assert result.verdict == "fail" and claims.verdict == "fail"  # declares nothing: undeclared departures
    assert expected <= kinds(findings), findings
    assert any(f.where == where for f in findings if f.kind in expected)
    plain = faithclip.load()  # the model is restored: the shipped weights, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(shapes.model.state_dict().values(), plain.model.state_dict().values()))


def test_text_and_sanity_detectors(shapes):
    assert check_text(shapes, callable_method(ignores_text, "ignores_text"), SETTINGS).verdict == "fail"
    assert check_sanity(shapes, callable_method(ignores_weights, "ignores_weights"), SETTINGS).verdict == "fail"


@pytest.mark.parametrize(
    "name, p1_verdict",
    [
        ("attention_eclip", "pass"),
        ("grad_eclip_official", "declared departure"),
        ("maskclip", "declared departure"),
        ("rise", "pass"),
    ],
)
def test_registered_flags_are_claims_the_detectors_verify(shapes, name, p1_verdict):
    spec, origin = resolve_method(name)
    result, findings = check_p1(shapes, spec, "image", SETTINGS)
    assert origin == "registered" and result.verdict == p1_verdict, result.evidence
    assert check_claims(spec, findings).verdict == "pass", check_claims(spec, findings).evidence
    if name == "grad_eclip_official":  # both departures of the paper: the input size and the rewritten block
        assert {"input_size", "recomputed_outside"} <= kinds(findings)


@pytest.mark.slow  # a soak: every check at its default sizes in a fresh process
def test_captum_plugin_registered_from_outside_is_checked_end_to_end(tmp_path):
    pytest.importorskip("captum")
    site = tmp_path / "site"
    shutil.copytree(REPO / "tests" / "plugins" / "faithclip_captum_example", site / "faithclip_captum_example")
    info = site / "faithclip_captum_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faithclip-captum-example\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[faithclip.methods]\ncaptum_ig = faithclip_captum_example:SPEC\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "src")]), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "faithclip", "check", "--methods", "captum_ig", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode in (0, 1), run.stderr
    card = json.loads((out / "check.json").read_text())["cards"][0]
    assert card["origin"].startswith("plugin (captum_ig = faithclip_captum_example:SPEC")
    verdicts = {c["check"]: c["verdict"] for c in card["checks"]}
    assert verdicts["P1 image"] == "pass" and verdicts["claims"] == "pass", card["checks"]
    assert set(verdicts) == {"P1 image", "claims", "P2 ladder", "P2 correctness", "sanity", "text sensitivity"}
    findings = card["checks"][0]["details"]["findings"]
    assert any(f["kind"] == "perturbed_inputs" for f in findings)  # IG's path from the baseline: seen, a note
    assert (run.returncode == 1) == any(v == "fail" for v in verdicts.values())
    assert "<table>" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["check", "--methods", "no_such_method"], "unknown method 'no_such_method'"),
        (["check", "--methods", "no_such_module_xyz:explain"], "cannot import 'no_such_module_xyz'"),
        (["check", "--methods", "faithclip.api:no_such_function"], "has no 'no_such_function'"),
        (["check", "--methods", "rise", "--checks", "p1,p3"], "--checks: unknown ['p3']"),
    ],
)
def test_bad_method_or_check_is_one_line_and_exit_2(capsys, argv, fragment):
    from faithclip.cli.main import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def nan_maps(model, pixels, texts):
    """Maps of the right shape that are all NaN (a broken method): never a pass."""
    return torch.full((pixels.shape[0], len(texts), 8, 8), float("nan"))


def raises(model, pixels, texts):
    raise ValueError("no such layer\nsecond line of the plugin's own message")


def test_nan_maps_fail_p1_and_a_raising_plugin_is_one_line(shapes):
    result, _, _ = p1(shapes, nan_maps, "nan_maps")
    assert result.verdict == "fail" and "NaN or infinite" in result.evidence
    result, _, _ = p1(shapes, raises, "raises")
    assert result.verdict == "inconclusive"
    assert result.evidence.endswith("raises raised ValueError: no such layer") and "second" not in result.evidence


def test_a_nan_map_is_an_error_not_a_silent_result(shapes, monkeypatch):
    import faithclip.api as api
    from faithclip.errors import MethodError

    original = api.run_method

    def poisoned(*args, **kwargs):  # the method's own result with one infinite value, as a fp16 overflow gives
        result = original(*args, **kwargs)
        result.maps[0, 0, 0, 0] = float("inf")
        return result

    monkeypatch.setattr(api, "run_method", poisoned)
    with pytest.raises(MethodError, match="self_attention produced NaN or infinite map values in float32"):
        faithclip.explain(shapes, torch.zeros(1, 3, 64, 64), "a red circle", "self_attention")


def test_a_departure_is_declared_only_by_its_own_flag(shapes):
    """P1's "declared departure" needs the flag of the departure's kind: a weight edit under modifies_model is
    declared; a resized input under modifies_model alone is a fail, and so are the claims."""
    from dataclasses import replace

    for function, flags, verdict in (
        (edits_weight, {"modifies_model": True}, "declared departure"),
        (resizes_input, {"modifies_model": True}, "fail"),
        (resizes_input, {"modifies_input": True}, "declared departure"),
    ):
        spec = replace(callable_method(function, function.__name__), **flags)
        try:
            result, findings = check_p1(shapes, spec, "image", SETTINGS)
        finally:
            for layer in shapes.model.vision_model.encoder.layers:
                layer._forward_hooks.clear()
        assert result.verdict == verdict, (function.__name__, flags, result.evidence)
        assert (check_claims(spec, findings).verdict == "fail") == (verdict == "fail")


def test_the_record_lists_only_the_settings_its_checks_read():
    """A run of p1 and claims shows no P2 ladder sizes; every setting a check reads is listed for it (the
    names below are those its function reads, by reading check.py)."""
    import dataclasses

    fast = CheckSettings(checks=("p1", "claims")).in_use()
    assert set(fast) == {"checks", "method_options", "seed", "p1_scenes"}
    ladder = CheckSettings(checks=("ladder",)).in_use()
    assert {"p2_scenes", "p2_ladders", "p2_rungs", "resamples"} <= set(ladder)
    assert "sanity_scenes" not in ladder and "scenes" not in ladder
    every = CheckSettings().in_use()
    assert set(every) == {field.name for field in dataclasses.fields(CheckSettings)}
