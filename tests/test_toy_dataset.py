"""The procedural toy data set: deterministic for a seed, held-out combinations kept out of training."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from lbdist.toy.dataset import (
    GRAMMAR_WORDS,
    KINDS,
    DataConfig,
    all_combinations,
    calibration_prompts,
    evaluation_prompts,
    render,
    render_batch,
    sample_scenes,
    split_combinations,
)
from lbdist.toy.tokenizer import UNK_ID, word_tokenizer


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_data_other_seed_other_data(kind):
    a = sample_scenes(12, kind, seed=3)
    b = sample_scenes(12, kind, seed=3)
    c = sample_scenes(12, kind, seed=4)
    assert a == b
    assert np.array_equal(render_batch(a), render_batch(b))
    assert a != c
    assert not np.array_equal(render_batch(a), render_batch(c))


def test_render_shapes_and_palette():
    config = DataConfig()
    video = render(sample_scenes(1, "video")[0], config)
    image = render(sample_scenes(1, "image")[0], config)
    assert video.shape == (config.num_frames, config.height, config.width, 3) and video.dtype == np.uint8
    assert image.shape == (config.height, config.width, 3) and image.dtype == np.uint8
    # two colours only: background and shape
    assert len(np.unique(video.reshape(-1, 3), axis=0)) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_split_is_a_partition_and_keeps_every_pair_in_training(kind):
    train = split_combinations(kind, "train")
    held = split_combinations(kind, "heldout")
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(all_combinations(kind))
    assert 0.08 <= len(held) / (len(train) + len(held)) <= 0.17
    train_pairs = {(i, a, j, b) for c in train for (i, a), (j, b) in itertools.combinations(enumerate(c), 2)}
    for combo in held:
        for (i, a), (j, b) in itertools.combinations(enumerate(combo), 2):
            assert (i, a, j, b) in train_pairs, (combo, a, b)
    assert split_combinations(kind, "heldout") == held  # deterministic


@pytest.mark.parametrize("kind", KINDS)
def test_scenes_come_from_their_split(kind):
    held = set(split_combinations(kind, "heldout"))
    assert all(s.combination not in held for s in sample_scenes(200, kind, "train", seed=1))
    assert all(s.combination in held for s in sample_scenes(50, kind, "heldout", seed=1))


@pytest.mark.parametrize("kind", KINDS)
def test_calibration_and_evaluation_prompts_are_disjoint(kind):
    calib = calibration_prompts(kind, n=8)
    evals = evaluation_prompts(kind)
    assert len(calib) == 8 and len(evals) == len(split_combinations(kind, "heldout"))
    assert not set(calib) & set(evals)
    train_prompts = {s.prompt for s in sample_scenes(2000, kind, "train", seed=0)}
    assert not set(evals) & train_prompts


def test_every_prompt_word_is_in_the_vocabulary():
    tok = word_tokenizer(GRAMMAR_WORDS)
    prompts = [s.prompt for kind in KINDS for s in sample_scenes(100, kind, seed=2)]
    for prompt in prompts:
        ids = tok(prompt)["input_ids"]
        assert UNK_ID not in ids, prompt
        assert len(ids) <= 16  # fits max_sequence_length of the toy call defaults


def test_moving_shape_stays_whole_inside_the_frame():
    for scene in sample_scenes(100, "video", seed=5):
        shape = (render(scene) != render(scene)[0, 0, 0]).any(-1)
        assert shape.any(axis=(1, 2)).all(), scene  # visible in every frame
        border = shape[:, [0, -1], :].any() or shape[:, :, [0, -1]].any()
        assert not border, scene  # never cut by the frame's edge


@pytest.mark.parametrize("field,value", [("height", 40), ("num_frames", 8), ("radius", (1.0, 2.0)),
                                         ("speed", (3.0, 9.0)), ("holdout", 0.7)])
def test_bad_config_names_the_value(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{field: value})


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kind"):
        sample_scenes(1, "audio")
    with pytest.raises(ValueError, match="split"):
        split_combinations("video", "test")
