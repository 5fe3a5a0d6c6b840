"""Data set v2: deterministic per seed, held-out combinations never in training, prompts in the grammar, and
v1 (what the bundled toys learned) unchanged."""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from lbdist.toy.dataset import (
    BACKGROUNDS,
    COLOURS,
    KINDS,
    SHAPES,
    DataConfig,
    calibration_prompts,
    evaluation_prompts,
    grammar_words,
    render,
    render_batch,
    sample_scenes,
    split_combinations,
)
from lbdist.toy.dataset_v2 import (
    MOTIONS,
    POSITIONS_V2,
    PROMPT_TOKENS_V2,
    SIZES,
    TEXTURES,
    is_heldout,
    object_track,
    valid_combination,
)
from lbdist.toy.render_v2 import render_v2
from lbdist.toy.tokenizer import UNK_ID, word_tokenizer

V2 = DataConfig(version="v2")
# sha256 of v1 renders and prompts, computed with the code the bundled toys were trained with (commit 34f6bf6)
V1_DIGEST = "7bdaea42c69259c136c5e8248a0b662f72b645b83b31d4126bbee5ea4e6024d1"


def test_v1_is_the_default_and_unchanged():
    assert DataConfig().version == "v1"
    h = hashlib.sha256()
    for kind in KINDS:
        for split in ("train", "heldout"):
            scenes = sample_scenes(40, kind, split, seed=5)
            h.update(render_batch(scenes).tobytes())
            h.update("|".join(s.prompt for s in scenes).encode())
        h.update("|".join(calibration_prompts(kind, 8) + evaluation_prompts(kind)).encode())
    assert h.hexdigest() == V1_DIGEST


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_data_other_seed_other_data(kind):
    a, b = sample_scenes(16, kind, seed=3, config=V2), sample_scenes(16, kind, seed=3, config=V2)
    c = sample_scenes(16, kind, seed=4, config=V2)
    assert a == b and a != c
    assert np.array_equal(render_batch(a, V2), render_batch(b, V2))
    assert not np.array_equal(render_batch(a, V2), render_batch(c, V2))


@pytest.mark.parametrize("kind", KINDS)
def test_a_render_does_not_depend_on_its_batch(kind):
    scenes = sample_scenes(6, kind, seed=8, config=V2)
    batch = render_v2(scenes, V2, chunk=4)
    for i in (0, 3, 5):
        assert torch.equal(batch[i], render_v2([scenes[i]], V2)[0])
        assert np.array_equal(render(scenes[i], V2), batch[i].numpy())
    frames = V2.num_frames if kind == "video" else None
    assert batch.shape == ((6, frames, 64, 64, 3) if frames else (6, 64, 64, 3)) and batch.dtype == torch.uint8


@pytest.mark.parametrize("kind", KINDS)
def test_no_heldout_combination_in_training_and_back(kind):
    train = sample_scenes(400, kind, "train", seed=1, config=V2)
    held = sample_scenes(100, kind, "heldout", seed=1, config=V2)
    assert not any(is_heldout(kind, s.combination, V2.holdout) for s in train)
    assert all(is_heldout(kind, s.combination, V2.holdout) for s in held)
    assert not {s.combination for s in train} & {s.combination for s in held}
    assert not set(evaluation_prompts(kind, 32, V2)) & set(calibration_prompts(kind, 32, config=V2))
    assert evaluation_prompts(kind, 8, V2) == evaluation_prompts(kind, 8, V2)
    with pytest.raises(ValueError, match="v2"):
        split_combinations(kind, "train", V2)


@pytest.mark.parametrize("kind", KINDS)
def test_split_holds_out_about_an_eighth_and_every_pair_is_seen_in_training(kind):
    """Over all one-object combinations: the held-out share, and every pair of attribute values of a held-out
    combination occurring in some training combination (held-out prompts test composition)."""
    motions = MOTIONS if kind == "video" else tuple(POSITIONS_V2)
    combos = [(b, t, ((c, s, z, m),)) for b, t, c, s, z, m in
              itertools.product(BACKGROUNDS, TEXTURES, COLOURS, SHAPES, SIZES, motions)]
    held = [c for c in combos if is_heldout(kind, c)]
    assert 0.09 <= len(held) / len(combos) <= 0.16
    flat = lambda c: (c[0], c[1], *c[2][0])
    seen = {p for c in combos if not is_heldout(kind, c) for p in itertools.combinations(enumerate(flat(c)), 2)}
    for combo in held:
        assert set(itertools.combinations(enumerate(flat(combo)), 2)) <= seen, combo


@pytest.mark.parametrize("kind", KINDS)
def test_scenes_cover_every_value_and_follow_the_rules(kind):
    scenes = sample_scenes(400, kind, "train", seed=2, config=V2)
    objects = [o for s in scenes for o in s.objects]
    motions = MOTIONS if kind == "video" else tuple(POSITIONS_V2)
    for values, allowed in (({o.colour for o in objects}, COLOURS), ({o.shape for o in objects}, SHAPES),
                            ({o.size for o in objects}, SIZES), ({o.motion for o in objects}, motions),
                            ({s.texture for s in scenes}, TEXTURES), ({s.background for s in scenes}, BACKGROUNDS),
                            ({len(s.objects) for s in scenes}, (1, 2))):
        assert values == set(allowed)
    for scene in scenes:
        assert valid_combination(kind, scene.combination, V2)
        for obj in scene.objects:  # the whole object inside the frame in every frame
            centres, radii = object_track(obj, kind, V2)
            reach = 1.3 * radii[:, None]
            assert (centres - reach >= 0).all() and (centres + reach <= 64).all(), scene
        if len(scene.objects) == 2:
            assert scene.objects[0].colour != scene.objects[1].colour


def test_every_prompt_word_is_in_the_vocabulary_and_fits_the_text_length():
    tok = word_tokenizer(grammar_words("v2"))
    for kind in KINDS:
        for scene in sample_scenes(200, kind, seed=6, config=V2):
            ids = tok(scene.prompt)["input_ids"]
            assert UNK_ID not in ids, scene.prompt
            assert len(ids) <= PROMPT_TOKENS_V2


def test_prompts_name_everything():
    scene = next(s for s in sample_scenes(50, "video", seed=4, config=V2) if len(s.objects) == 2)
    prompt = scene.prompt
    for obj in scene.objects:
        assert f"{obj.size} {obj.colour} {obj.shape}" in prompt
        assert obj.motion in prompt
    assert scene.background in prompt and (scene.texture in prompt)


def test_motions_move_grow_and_bounce():
    scenes = sample_scenes(300, "video", seed=9, config=V2)
    by_motion = {o.motion: o for s in scenes for o in s.objects}
    for motion, obj in by_motion.items():
        centres, radii = object_track(obj, "video", V2)
        if motion == "growing":
            assert radii[-1] / radii[0] == pytest.approx(V2.growth[1] / V2.growth[0])
            assert np.ptp(centres, axis=0).max() == 0
        elif motion == "bouncing":
            assert centres[0, 1] == pytest.approx(centres[-1, 1]) and centres[:, 1].min() < centres[0, 1] - 10
        else:
            assert np.linalg.norm(centres[-1] - centres[0]) >= 16


@pytest.mark.parametrize("field,value", [("version", "v3"), ("small", (7.0, 9.0)), ("large", (8.0, 8.4)),
                                         ("two_objects", 1.5), ("texture_amplitude", 80.0), ("growth", (1.1, 1.3)),
                                         ("bounce", (12.0, 60.0))])
def test_bad_v2_config_names_the_value(field, value):
    with pytest.raises(ValueError, match=field):
        DataConfig(**{"version": "v2", field: value})


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="kind"):
        sample_scenes(1, "audio", config=V2)
    with pytest.raises(ValueError, match="split"):
        sample_scenes(1, "video", "test", config=V2)
    with pytest.raises(ValueError, match="version"):
        grammar_words("v9")
    with pytest.raises(ValueError, match="version"):
        render_v2(sample_scenes(1, "video", config=V2), DataConfig())
    assert replace(V2, two_objects=0.0) and all(
        len(s.objects) == 1 for s in sample_scenes(20, "video", config=replace(V2, two_objects=0.0)))
