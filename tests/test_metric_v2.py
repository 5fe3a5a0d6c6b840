"""Adherence of v2 samples: ground-truth renders score 1.0; every corrupted attribute lowers the score and is
the attribute reported as missed (table-driven); v1 prompts keep their v1 scores."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest

from lbdist.toy.dataset import BACKGROUNDS, COLOURS, KINDS, SHAPES, DataConfig, render, render_batch, sample_scenes
from lbdist.toy.dataset_v2 import MOTIONS, POSITIONS_V2, SIZES, TEXTURES, make_prompt_v2
from lbdist.toy.metric import adherence, mean_adherence
from lbdist.toy.metric_v2 import analyse_v2, is_v2_prompt, parse_prompt_v2

V2 = DataConfig(version="v2")


def _pool(kind: str, n: int = 150):
    return sample_scenes(n, kind, "train", seed=11, config=V2) + sample_scenes(n // 5, kind, "heldout", seed=11,
                                                                                config=V2)


@pytest.mark.parametrize("kind", KINDS)
def test_ground_truth_renders_score_one_for_every_attribute_value(kind):
    scenes = _pool(kind)
    objects = [o for s in scenes for o in s.objects]
    motions = MOTIONS if kind == "video" else tuple(POSITIONS_V2)
    assert {o.motion for o in objects} == set(motions) and {s.texture for s in scenes} == set(TEXTURES)
    assert {o.colour for o in objects} == set(COLOURS) and {o.size for o in objects} == set(SIZES)
    assert {o.shape for o in objects} == set(SHAPES) and {s.background for s in scenes} == set(BACKGROUNDS)
    results = [adherence(f, s.prompt) for f, s in zip(render_batch(scenes, V2), scenes)]
    misses = [(s.prompt, r.found) for s, r in zip(scenes, results) if r.score < 1.0]
    assert not misses, misses[:3]


def _attrs(scene) -> dict:
    return {"background": scene.background, "texture": scene.texture,
            "objects": [list(o.attributes) for o in scene.objects]}


def _prompt(kind: str, a: dict) -> str:
    return make_prompt_v2(kind, a["background"], a["texture"], [tuple(o) for o in a["objects"]])


def _other(value, options):
    return next(v for v in options if v != value)


def _swap_colours(a):
    a["objects"][0][0], a["objects"][1][0] = a["objects"][1][0], a["objects"][0][0]


# (case, kind, objects in the scene, change to the prompt, attribute that must be reported as missed)
PROMPT_CORRUPTIONS = [
    ("background colour", "video", 1, lambda a: a.update(background=_other(a["background"], BACKGROUNDS)),
     "background"),
    ("texture", "video", 1, lambda a: a.update(texture=_other(a["texture"], TEXTURES)), "texture"),
    ("object colour", "video", 1, lambda a: a["objects"][0].__setitem__(0, _other(a["objects"][0][0], COLOURS)),
     "colour.1"),
    ("object shape", "video", 1, lambda a: a["objects"][0].__setitem__(1, _other(a["objects"][0][1], SHAPES)),
     "shape.1"),
    ("object size", "video", 1, lambda a: a["objects"][0].__setitem__(2, _other(a["objects"][0][2], SIZES)),
     "size.1"),
    ("object motion", "video", 1, lambda a: a["objects"][0].__setitem__(3, _other(a["objects"][0][3], MOTIONS)),
     "motion.1"),
    ("still position", "image", 1,
     lambda a: a["objects"][0].__setitem__(3, _other(a["objects"][0][3], tuple(POSITIONS_V2))), "position.1"),
    ("still size", "image", 1, lambda a: a["objects"][0].__setitem__(2, _other(a["objects"][0][2], SIZES)),
     "size.1"),
    ("second object's motion", "video", 2,
     lambda a: a["objects"][1].__setitem__(3, _other(a["objects"][1][3], MOTIONS)), "motion.2"),
    ("an object too many", "video", 1, lambda a: a["objects"].append(
        [_other(a["objects"][0][0], COLOURS), "square", "small", "left"]), "count"),
    ("an object missing", "video", 2, lambda a: a["objects"].pop(), "count"),
    ("colours swapped between objects", "video", 2, _swap_colours, "binding"),
    ("colours swapped between stills", "image", 2, _swap_colours, "binding"),
]


def _scene_for(kind: str, count: int):
    """A scene with `count` objects; with two, objects of different shapes and motions (so a swap shows)."""
    for scene in sample_scenes(80, kind, "train", seed=21, config=V2):
        objs = scene.objects
        if len(objs) == count and (count == 1 or (objs[0].shape != objs[1].shape and objs[0].motion != objs[1].motion)):
            return scene
    raise AssertionError("no suitable scene")


@pytest.mark.parametrize("case,kind,count,change,attribute", PROMPT_CORRUPTIONS, ids=[c[0] for c in PROMPT_CORRUPTIONS])
def test_each_wrong_attribute_in_the_prompt_lowers_the_score(case, kind, count, change, attribute):
    scene = _scene_for(kind, count)
    frames = render(scene, V2)
    assert adherence(frames, scene.prompt).score == 1.0
    attrs = copy.deepcopy(_attrs(scene))
    change(attrs)
    result = adherence(frames, _prompt(kind, attrs))
    assert result.score < 1.0, (case, result)
    assert not result.matches[attribute], (case, result.expected, result.found)


def _frozen(frames):
    return np.repeat(frames[:1], len(frames), axis=0)


FRAME_CORRUPTIONS = [
    ("reversed clip", lambda f, s: f[::-1], "motion.1"),
    ("frozen clip", lambda f, s: _frozen(f), "motion.1"),
    ("background only", lambda f, s: np.broadcast_to(f[:, :1, :1], f.shape).copy(), "count"),
    ("other texture", lambda f, s: render(replace(s, texture=_other(s.texture, TEXTURES)), V2), "texture"),
    ("other background", lambda f, s: render(replace(s, background=_other(s.background, BACKGROUNDS)), V2),
     "background"),
    ("object recoloured", lambda f, s: render(replace(s, objects=(replace(
        s.objects[0], colour=_other(s.objects[0].colour, COLOURS)),)), V2), "colour.1"),
]


@pytest.mark.parametrize("case,corrupt,attribute", FRAME_CORRUPTIONS, ids=[c[0] for c in FRAME_CORRUPTIONS])
def test_each_corrupted_render_lowers_the_score(case, corrupt, attribute):
    scene = next(s for s in sample_scenes(60, "video", seed=3, config=V2)
                 if len(s.objects) == 1 and s.objects[0].motion in ("left", "right", "up", "down"))
    result = adherence(corrupt(render(scene, V2), scene), scene.prompt)
    assert result.score < 1.0 and not result.matches[attribute], (case, result.expected, result.found)


def test_robust_to_mild_blur_and_noise_of_a_decoder():
    rng = np.random.default_rng(5)
    scores = []
    for kind, axes in (("video", (1, 2)), ("image", (0, 1))):
        scenes = sample_scenes(40, kind, seed=6, config=V2)
        for scene, frames in zip(scenes, render_batch(scenes, V2).astype(np.float64)):
            blurred = sum(np.roll(np.roll(frames, dy, axes[0]), dx, axes[1]) for dy in (-1, 0, 1)
                          for dx in (-1, 0, 1)) / 9.0
            noisy = np.clip(blurred + rng.normal(0, 4, frames.shape), 0, 255).astype(np.uint8)
            scores.append(adherence(noisy, scene.prompt).score)
    assert np.mean(scores) >= 0.98


def test_attribute_scores_group_objects_and_v1_is_unchanged():
    scene = _scene_for("video", 2)
    result = adherence(render(scene, V2), scene.prompt)
    assert set(result.attribute_scores) == {"background", "texture", "count", "colour", "shape", "size", "motion",
                                            "binding"}
    v1 = sample_scenes(1, "video", seed=1)[0]
    assert not is_v2_prompt(v1.prompt)
    v1_result = adherence(render(v1), v1.prompt)
    assert v1_result.score == 1.0 and set(v1_result.attribute_scores) == {"background", "colour", "shape", "direction"}
    assert mean_adherence([render(scene, V2), render(v1)], [scene.prompt, v1.prompt]) == 1.0


def test_analyse_finds_the_objects():
    scene = _scene_for("video", 2)
    found = analyse_v2(render(scene, V2))
    assert found["count"] == 2
    assert {(o["colour"], o["shape"], o["size"], o["motion"]) for o in found["objects"]} == \
        {o.attributes for o in scene.objects}


def test_parse_prompt_and_its_errors():
    parsed = parse_prompt_v2("a small red circle moving left and a large blue square growing on a black striped "
                             "background")
    assert parsed == {"kind": "video", "background": "black", "texture": "striped", "objects": [
        {"colour": "red", "shape": "circle", "size": "small", "motion": "left"},
        {"colour": "blue", "shape": "square", "size": "large", "motion": "growing"}]}
    still = parse_prompt_v2("plain gray background with a large cyan triangle at the top")
    assert still["kind"] == "image" and still["objects"][0]["motion"] == "top"
    for bad, word in (("a small pink circle growing on a plain black background", "pink"),
                      ("a small red circle moving sideways on a plain black background", "sideways"),
                      ("a small red circle growing on a black wavy background", "texture"),
                      ("a small red circle on a plain black background", "followed")):
        with pytest.raises(ValueError, match=word):
            parse_prompt_v2(bad)
