"""The demo (the README's main job) at reduced size: tiny random Wan, few steps, few epochs."""
from __future__ import annotations

import json
import math

import imageio.v3 as iio
import pytest

from lbdist.cli import main
from lbdist.demo import DemoConfig, run_demo


def test_demo_writes_the_side_by_side_video_and_a_report(tmp_path):
    report = run_demo(tmp_path, DemoConfig(model="tiny:wan", steps=6, interval=3, epochs=5), progress=False)
    methods = report["methods"]
    assert list(methods) == ["full compute", "LearniBridge", "uncalibrated bridge", "TaylorSeerCache lite"]
    assert methods["LearniBridge"]["transformer_calls"]["calibrated"] == 8  # 4 bridged steps x 2 branches
    assert methods["uncalibrated bridge"]["transformer_calls"]["calibrated"] == 0
    # full steps executed: 6 of 6; the bridge's 0, 3; TaylorSeer lite's warm-up 0, 1, 2 and its refresh at 4
    assert [m["full_steps"] for m in methods.values()] == [6, 2, 2, 4]
    assert report["peer"]["config"]["cache_interval"] == 3 and report["peer"]["config"]["hooked_modules"]
    for name in ("LearniBridge", "uncalibrated bridge", "TaylorSeerCache lite"):
        m = methods[name]
        assert math.isfinite(m["psnr_db"]) and 0 < m["ssim"] <= 1 and m["latent_rel_l2"] > 0
        assert m["speedup_transformer"] > 0 and 0 <= m["adherence"] <= 1
    assert report["prompt"] not in report["calibration_prompts"] and len(report["calibration_prompts"]) == 3
    # the lbdist recipe, early-stopped on training-split validation prompts (neither calibration nor shown)
    assert report["recipe"]["recipe"] == "lbdist" and len(report["validation_prompts"]) == 6
    assert not set(report["validation_prompts"]) & set(report["calibration_prompts"] + [report["prompt"]])
    assert report["train_config"]["lr"] == 2e-3 and report["train_config"]["eval_every"] == 5
    mp4, gif = iio.imread(tmp_path / "side_by_side.mp4"), iio.imread(tmp_path / "side_by_side.gif")
    assert mp4.shape[0] == gif.shape[0] == 5 and gif.shape[2] > 4 * 16 * 4  # four upscaled panels side by side
    assert json.loads((tmp_path / "report.json").read_text())["prompt"] == report["prompt"]
    text = (tmp_path / "report.md").read_text()
    assert "| LearniBridge |" in text and "| TaylorSeerCache lite | 4 |" in text


def test_demo_defaults_are_the_recipe_protocol():
    config = DemoConfig()
    assert (config.rank, config.epochs, config.lr, config.validation_prompts) == (8, 300, 2e-3, 6)


def test_demo_validation_prompts_avoid_the_shown_prompt():
    from lbdist.demo import _VALIDATION_POOL_SEED, _prompts
    from lbdist.evaluate.generalisation import VALIDATION_POOL_SEED

    assert _VALIDATION_POOL_SEED == VALIDATION_POOL_SEED  # drawn as the held-out protocol draws them
    calibration, validation, shown = _prompts(DemoConfig(validation_prompts=3))
    assert len(validation) == 3 and shown not in validation
    _, validation, shown = _prompts(DemoConfig(prompt=validation[0]))  # a training prompt shown: not validated on
    assert shown not in validation and len(validation) == 6


@pytest.mark.parametrize("kwargs,message", [
    (dict(calibration_prompts=2), "calibrates from 3-5 prompts"),
    (dict(interval=1), "interval=1: must be an integer >= 2"),
    (dict(scale=0), "scale=0: must be an integer in 1..16"),
    (dict(validation_prompts=0), "validation_prompts=0: must be an integer in 1..20"),
])
def test_bad_demo_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DemoConfig(**kwargs)


def test_demo_refuses_a_calibration_prompt_as_the_shown_one(tmp_path):
    from lbdist.toy.dataset import calibration_prompts

    with pytest.raises(ValueError, match="is a calibration prompt"):
        run_demo(tmp_path, DemoConfig(model="tiny:wan", steps=4, interval=2, epochs=2,
                                      prompt=calibration_prompts("video", n=3)[0]), progress=False)


def test_demo_cli(tmp_path, capsys):
    assert main(["demo", "--model", "tiny:wan", "--out", str(tmp_path), "--steps", "4", "--interval", "2",
                 "--epochs", "3"]) == 0
    assert "side_by_side.mp4" in capsys.readouterr().out and (tmp_path / "side_by_side.gif").is_file()
