"""The bundled toy models: load offline with their diffusers class, generate on the CPU, follow prompts."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lbdist.toy.bundled import PIPELINE_CLASSES, load_toy, toy_path
from lbdist.toy.dataset import calibration_prompts
from lbdist.toy.evaluate import generate
from lbdist.toy.metric import adherence

FAMILIES = tuple(PIPELINE_CLASSES)
MAX_TOTAL_BYTES = 60 * 1024 * 1024


def _bundle(family):
    path = toy_path(family)
    if not (path / "model_index.json").is_file():
        pytest.skip(f"no bundled toy weights at {path} yet (train them: tools/train_toys_gpu.sh)")
    return path


@pytest.fixture(scope="module", params=FAMILIES)
def toy(request):
    _bundle(request.param)
    return request.param, load_toy(request.param)


def test_loads_with_its_real_pipeline_class_and_enough_blocks(toy):
    family, (pipe, defaults) = toy
    assert type(pipe).__name__ == PIPELINE_CLASSES[family]
    t = pipe.transformer
    blocks = len(getattr(t, "blocks", [])) + len(getattr(t, "transformer_blocks", [])) + \
        len(getattr(t, "single_transformer_blocks", []))
    assert blocks >= 8
    for key in ("height", "width", "num_inference_steps", "guidance_scale", "max_sequence_length"):
        assert key in defaults
    if family == "hunyuan_video":
        assert defaults["prompt_template"] == {"template": "{}", "crop_start": 0}


def test_generates_a_short_sample_on_the_cpu(toy):
    family, (pipe, defaults) = toy
    prompt = calibration_prompts("image" if family == "flux" else "video", n=1)[0]
    sample = generate(pipe, [prompt], defaults, seed=0, num_inference_steps=4)[0]
    frames = defaults.get("num_frames")
    expected = (frames, defaults["height"], defaults["width"], 3) if frames else (defaults["height"], defaults["width"], 3)
    assert sample.shape == expected and sample.dtype == np.uint8
    assert sample.std() > 1.0  # not a constant image


# Issue 4's quality bar (held-out adherence >= 0.9) is not met by the shipped models: the one GPU run there was
# device time for (5.5 minutes per family, H100, see README "Toy models") reached 0.61 held-out for Wan and
# HunyuanVideo, which learned background and colour but not yet shape and motion; FLUX, trained on the CPU after
# a GPU crash, reached 0.84. The bar stays written here as a strict xfail: it turns into a failure, to be
# un-marked, as soon as a retrained bundle meets it.
BAR_MISSED = pytest.mark.xfail(strict=True, reason="shipped toys miss the 0.9 held-out adherence bar (0.61 / 0.61 / 0.84)")
# Families whose full compute does not yet follow training prompts (>= 0.75): shape and motion not learned.
BELOW_TRAINING_BAR = ("wan", "hunyuan_video")


def test_full_compute_gets_background_and_colour_right(toy):
    """What the shipped models did learn: the background and the shape's colour of a training prompt."""
    family, (pipe, defaults) = toy
    prompts = calibration_prompts("image" if family == "flux" else "video", n=4)
    samples = generate(pipe, prompts, defaults, seed=0)
    results = [adherence(s, p) for s, p in zip(samples, prompts)]
    for attribute in ("background", "colour"):
        assert np.mean([r.matches[attribute] for r in results]) >= 0.75, (family, attribute, results)


def test_full_compute_follows_a_training_prompt(toy, request):
    family, (pipe, defaults) = toy
    if family in BELOW_TRAINING_BAR:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{family} toy: shape and motion not learned yet"))
    prompts = calibration_prompts("image" if family == "flux" else "video", n=2)
    samples = generate(pipe, prompts, defaults, seed=0)
    assert np.mean([adherence(s, p).score for s, p in zip(samples, prompts)]) >= 0.75


@BAR_MISSED
def test_reported_heldout_adherence_meets_the_bar():
    reports = {}
    for family in FAMILIES:
        path = _bundle(family)
        reports[family] = json.loads((path / "lbdist_eval.json").read_text())
    for family, report in reports.items():
        assert report["heldout_adherence"] >= 0.9, (family, report["heldout_adherence"])


def test_bundles_fit_the_size_budget():
    paths = [_bundle(family) for family in FAMILIES]
    total = sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())
    assert total <= MAX_TOTAL_BYTES, f"{total / 2**20:.1f} MiB > 60 MiB"


def test_missing_bundle_names_the_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_toy.py"):
        load_toy("wan", path=tmp_path)
    with pytest.raises(ValueError, match="family"):
        load_toy("sd3")
