"""Prompt adherence: 1.0 on ground-truth renders, lower on corrupted ones, by the documented amounts."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lbdist.toy.dataset import BACKGROUNDS, KINDS, all_combinations, make_prompt, render, sample_scenes
from lbdist.toy.metric import adherence, analyse, mean_adherence, parse_prompt


@pytest.mark.parametrize("kind", KINDS)
def test_ground_truth_renders_score_one_for_every_combination(kind):
    pool = sample_scenes(300, kind, "train", seed=11) + sample_scenes(60, kind, "heldout", seed=11)
    by_motion = {s.motion: s for s in pool}  # a geometry that fits each direction / position
    scenes = [replace(by_motion[m], colour=c, shape=sh, background=b) for c, sh, m, b in all_combinations(kind)]
    assert mean_adherence([render(s) for s in scenes], [s.prompt for s in scenes]) == 1.0


def test_wrong_attributes_cost_a_quarter_each():
    scene = sample_scenes(1, "video", seed=1)[0]
    frames = render(scene)
    colour = "blue" if scene.colour != "blue" else "red"
    shape = "square" if scene.shape != "square" else "circle"
    background = next(b for b in BACKGROUNDS if b != scene.background)
    assert adherence(frames, scene.prompt).score == 1.0
    assert adherence(frames, make_prompt("video", colour, *scene.combination[1:])).score == 0.75
    assert adherence(frames, make_prompt("video", scene.colour, shape, *scene.combination[2:])).score == 0.75
    assert adherence(frames, make_prompt("video", *scene.combination[:3], background)).score == 0.75
    wrong = make_prompt("video", colour, shape, scene.motion, background)
    assert adherence(frames, wrong).score == 0.25


def test_reversed_or_frozen_clip_fails_the_direction():
    scene = sample_scenes(1, "video", seed=2)[0]
    frames = render(scene)
    result = adherence(frames[::-1], scene.prompt)
    assert result.score == 0.75 and not result.matches["direction"]
    frozen = np.repeat(frames[:1], len(frames), axis=0)
    assert adherence(frozen, scene.prompt).found["direction"] is None


def test_empty_and_noise_frames_score_low():
    scene = sample_scenes(1, "video", seed=3)[0]
    frames = render(scene)
    blank = np.broadcast_to(frames[:, :1, :1], frames.shape).copy()  # the background colour only
    assert adherence(blank, scene.prompt).score == 0.25
    noise = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
    assert adherence(noise, scene.prompt).score <= 0.5


def test_wrong_position_of_a_still():
    scene = sample_scenes(1, "image", seed=4)[0]
    image = render(scene)
    assert adherence(image, scene.prompt).score == 1.0
    other = "left" if scene.motion != "left" else "right"
    result = adherence(image, make_prompt("image", scene.colour, scene.shape, other, scene.background))
    assert result.score == 0.75 and not result.matches["position"]


def test_robust_to_mild_noise_and_blur_of_a_decoder():
    rng = np.random.default_rng(5)
    scores = []
    for scene in sample_scenes(20, "video", seed=6):
        frames = render(scene).astype(np.float64)
        blurred = sum(np.roll(np.roll(frames, dy, 1), dx, 2) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
        noisy = np.clip(blurred + rng.normal(0, 8, frames.shape), 0, 255).astype(np.uint8)
        scores.append(adherence(noisy, scene.prompt).score)
    assert np.mean(scores) == 1.0


def test_accepts_float_frames_and_channels_first():
    scene = sample_scenes(1, "image", seed=7)[0]
    image = render(scene)
    assert adherence(image.astype(np.float32) / 255.0, scene.prompt).score == 1.0
    assert adherence(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0, scene.prompt).score == 1.0


def test_analyse_reports_centroids_that_move():
    scene = sample_scenes(1, "video", seed=8)[0]
    found = analyse(render(scene))
    first, last = found["centroids"][0], found["centroids"][-1]
    assert np.allclose(np.subtract(last, first), np.multiply(scene.velocity, len(found["centroids"]) - 1), atol=1.0)


def test_parse_prompt_and_its_errors():
    assert parse_prompt("navy background with a cyan square moving up") == {
        "colour": "cyan", "shape": "square", "background": "navy", "kind": "video", "direction": "up"}
    assert parse_prompt("a red circle at the top on a gray background")["position"] == "top"
    with pytest.raises(ValueError, match="grammar"):
        parse_prompt("a cat on a sofa")
    with pytest.raises(ValueError, match="pink"):
        parse_prompt("a pink circle moving up on a gray background")
    with pytest.raises(ValueError, match="as many"):
        mean_adherence([np.zeros((8, 8, 3), np.uint8)], [])
