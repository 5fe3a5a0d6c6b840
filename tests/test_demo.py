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
    assert list(methods) == ["full compute", "LearniBridge", "uncalibrated bridge"]
    assert methods["LearniBridge"]["transformer_calls"]["calibrated"] == 8  # 4 bridged steps x 2 branches
    assert methods["uncalibrated bridge"]["transformer_calls"]["calibrated"] == 0
    for name in ("LearniBridge", "uncalibrated bridge"):
        m = methods[name]
        assert math.isfinite(m["psnr_db"]) and 0 < m["ssim"] <= 1 and m["latent_rel_l2"] > 0
        assert m["speedup_transformer"] > 0 and 0 <= m["adherence"] <= 1
    assert report["prompt"] not in report["calibration_prompts"] and len(report["calibration_prompts"]) == 3
    mp4, gif = iio.imread(tmp_path / "side_by_side.mp4"), iio.imread(tmp_path / "side_by_side.gif")
    assert mp4.shape[0] == gif.shape[0] == 5 and gif.shape[2] > 3 * 16 * 4  # three upscaled panels side by side
    assert json.loads((tmp_path / "report.json").read_text())["prompt"] == report["prompt"]
    assert "| LearniBridge |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("kwargs,message", [
    (dict(calibration_prompts=2), "calibrates from 3-5 prompts"),
    (dict(interval=1), "interval=1: must be an integer >= 2"),
    (dict(scale=0), "scale=0: must be an integer in 1..16"),
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
