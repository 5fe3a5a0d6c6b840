"""`lbdist generate`: loads a diffusers folder offline, bridges, writes mp4/png, reports the step counts."""
from __future__ import annotations

import json

import imageio.v3 as iio
import pytest

from lbdist.cli import main
from helpers import make_pipe


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan")
    make_pipe("wan").save_pretrained(folder)
    (folder / "lbdist_defaults.json").write_text(json.dumps(
        {"height": 16, "width": 16, "num_frames": 5, "guidance_scale": 4.0, "max_sequence_length": 12,
         "num_inference_steps": 8}))
    return folder


def test_generate_video_from_a_local_diffusers_folder(wan_folder, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--model", str(wan_folder), "--prompt", "a red circle", "--schedule", "3",
                 "--out", str(out)]) == 0
    frames = iio.imread(out)
    assert frames.shape[0] == 5 and frames.shape[-1] == 3
    line = capsys.readouterr().out
    # 8 steps (from lbdist_defaults.json), N=3: full 0, 3, 6; two guidance branches
    assert "8 steps (full 3, calibrated 0, uncalibrated bridged 5) | transformer calls full 6, bridged 10" in line
    assert "transformer" in line and " s |" in line


def test_generate_image_png_and_gif(tmp_path, capsys):
    assert main(["generate", "--model", "tiny:flux", "--prompt", "a blue square", "--steps", "6",
                 "--out", str(tmp_path / "img.png")]) == 0
    assert iio.imread(tmp_path / "img.png").shape == (16, 16, 3)
    assert "full 6, bridged 0" in capsys.readouterr().out
    assert main(["generate", "--model", "tiny:hunyuan_video", "--prompt", "a blue square", "--steps", "6",
                 "--schedule", "steps:0,4", "--out", str(tmp_path / "v.gif")]) == 0
    assert iio.imread(tmp_path / "v.gif").shape[0] == 5
    assert "full 2, bridged 4" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--model", "tiny:flux", "--out", "x.mp4"], "output_format 'mp4' does not fit flux (image)"),
    (["--model", "tiny:wan", "--out", "x.png"], "output_format 'png' does not fit wan (video)"),
    (["--model", "tiny:wan", "--out", "x.webm"], "--out 'x.webm': use a .mp4 or .gif file"),
    (["--model", "tiny:wan", "--out", "x.mp4", "--schedule", "0"], "interval N must be an integer >= 1, got 0"),
    (["--model", "tiny:wan", "--out", "x.mp4", "--schedule", "steps:2,4"], "step 0 must be full"),
    (["--model", "tiny:wan", "--out", "x.mp4", "--adapters", "somewhere"], "adapters were given without a schedule"),
    (["--model", "tiny:unet", "--out", "x.mp4"], "unknown family 'unet'"),
    (["--model", "tiny:wan", "--out", "x.mp4", "--dtype", "int8"], "unknown dtype 'int8'"),
    (["--model", "tiny:wan", "--out", "x.mp4", "--steps", "0"], "num_inference_steps must be an integer in 1..1000, got 0"),
    (["--model", "tiny:wan", "--out", "x.mp4", "--schedule", "1"], "bridges no step"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--prompt", "a red circle", *argv]) == 2
    assert message in capsys.readouterr().err
