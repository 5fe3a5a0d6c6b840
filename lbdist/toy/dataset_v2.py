"""Data-set version "v2": one or two objects with a size and a motion, on a textured or gradient background.

A *scene* holds one or two objects, each of a shape (`SHAPES`), colour (`COLOURS`, different per object),
size (`SIZES`: small / large) and, in a clip, a motion (`MOTIONS`: left / right / up / down at a constant
speed, growing from 0.75x to 1.25x its radius, or bouncing: one hop up and back down), in a still a position
(`POSITIONS_V2`). The background has a colour (`BACKGROUNDS`) and a texture (`TEXTURES`): plain, striped
(bands an eighth of the frame wide, horizontal or vertical), checkered (squares an eighth of the frame),
noisy (random grey cells a sixteenth of the frame) or a linear gradient in a random direction, each a
grey-level modulation of `texture_amplitude` around the colour. Prompts come from a grammar that names all
of it, two templates per kind:

    "a small red circle moving left and a large blue square growing on a black striped background"
    "plain navy background with a large cyan triangle bouncing"
    "a small yellow square at the left and a large green circle at the right on a white checkered background"

Every word is in `GRAMMAR_WORDS_V2`. Prompts have at most 20 words (+ end token): pipelines need
`max_sequence_length >= 24` (`PROMPT_TOKENS_V2`).

Determinism: `sample_scenes_v2(n, kind, split, seed, config)` draws from a `numpy` generator seeded by `seed`
(and kind, split) only; `render_v2.render_v2` is a pure function of each scene, so a seed gives the same data
on every machine.

Split: an attribute *combination* (background colour, texture, and each object's colour, shape, size and
motion or position, objects unordered) is held out iff a keyed BLAKE2 hash of it falls below `holdout`
(`is_heldout`): the same decision everywhere, with no list to store (there are about 10^6 combinations).
Training scenes are drawn from the rest by rejection, so no held-out combination ever appears in training;
with this many combinations every pair of attribute values of a held-out one still occurs in training
(tests/test_toy_dataset_v2.py checks it), so held-out prompts test composition, not unseen words.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .dataset import BACKGROUNDS, COLOURS, DIRECTIONS, KINDS, SHAPES, SPLITS, SQUARE_HALF, TRIANGLE_R

SIZES = ("small", "large")
TEXTURES = ("plain", "striped", "checkered", "noisy", "gradient")
MOTIONS = (*DIRECTIONS, "growing", "bouncing")
POSITIONS_V2 = {"left": (0.22, 0.5), "right": (0.78, 0.5), "top": (0.5, 0.22), "bottom": (0.5, 0.78),
                "center": (0.5, 0.5)}
TEMPLATES_V2 = ("a {objects} on a {background} background", "{background} background with a {objects}")
GRAMMAR_WORDS_V2 = tuple(dict.fromkeys([*COLOURS, *BACKGROUNDS, *SHAPES, *SIZES, *TEXTURES, *DIRECTIONS,
                                        *POSITIONS_V2, "growing", "bouncing", "moving", "background", "with",
                                        "at", "the", "on", "a", "and"]))
PROMPT_TOKENS_V2 = 24
# Size split of the metric, as a fraction of the frame's smaller side: radius below -> "small".
SIZE_SPLIT = 8.5 / 64
# Radius of the circle around each shape, relative to its size radius (for keeping objects apart).
CIRCUMRADIUS = {"circle": 1.0, "square": SQUARE_HALF * math.sqrt(2.0), "triangle": TRIANGLE_R}
GAP = 3.0  # pixels kept free between two objects, so that they stay separate components
_MAX_TRIES = 5000  # placements tried for one scene (a feasible pair needs about 1-100)
_FEASIBLE_TRIES = 400  # placements tried with a fixed generator before a pair counts as unable to share a frame
COLOURS_LIST, BACKGROUND_LIST = tuple(COLOURS), tuple(BACKGROUNDS)


@dataclass(frozen=True)
class SceneObject:
    """One object: what the prompt says (colour, shape, size, motion) and the geometry it leaves open.

    `motion` is one of `MOTIONS` in a clip and one of `POSITIONS_V2` in a still. `radius` is the size radius in
    pixels (the circle's radius; squares and triangles scaled alike), `start` the centre at frame 0,
    `velocity` pixels per frame (left / right / up / down), `amplitude` the height of a bounce.
    """

    colour: str
    shape: str
    size: str
    motion: str
    radius: float = 5.0
    start: tuple[float, float] = (32.0, 32.0)
    velocity: tuple[float, float] = (0.0, 0.0)
    amplitude: float = 0.0

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        return (self.colour, self.shape, self.size, self.motion)


@dataclass(frozen=True)
class SceneV2:
    """One v2 sample. The texture fields fix the background's pattern: stripe orientation (0 horizontal
    bands, 1 vertical), pattern phase in pixels (x, y), gradient direction in radians, noise seed."""

    kind: str
    background: str
    texture: str
    objects: tuple[SceneObject, ...]
    template: int = 0
    texture_orientation: int = 0
    texture_phase: tuple[float, float] = (0.0, 0.0)
    texture_angle: float = 0.0
    texture_seed: int = 0
    version = "v2"

    @property
    def combination(self) -> tuple:
        """(background, texture, objects' attributes sorted): what the split decides on."""
        return (self.background, self.texture, tuple(sorted(o.attributes for o in self.objects)))

    @property
    def prompt(self) -> str:
        return make_prompt_v2(self.kind, self.background, self.texture, [o.attributes for o in self.objects],
                              self.template)


def check_config(config) -> None:
    """`DataConfig.__post_init__` for version "v2": ranges in order and every motion inside the frame."""
    side = min(config.height, config.width)
    for name in ("small", "large", "bounce", "growth", "speed"):
        lo, hi = getattr(config, name)
        if not 0.0 < lo <= hi:
            raise ValueError(f"{name}={getattr(config, name)}: need 0 < low <= high")
    if not (config.small[0] >= 1.5 and config.small[1] < SIZE_SPLIT * side < config.large[0]):
        raise ValueError(f"small={config.small}, large={config.large}: need 1.5 <= small <= "
                         f"{SIZE_SPLIT * side:.2f} px (the metric's size split) < large on a {side} px frame")
    if not 0.0 <= config.two_objects <= 1.0:
        raise ValueError(f"two_objects={config.two_objects}: must be in [0, 1]")
    if not 0.0 <= config.texture_amplitude <= 40.0:
        raise ValueError(f"texture_amplitude={config.texture_amplitude}: must be in [0, 40]")
    if not config.growth[0] < 1.0 < config.growth[1]:
        raise ValueError(f"growth={config.growth}: need low < 1 < high (the median frame shows the named size)")
    reach = 2 * TRIANGLE_R * config.large[1] + 2
    for name, extent in (("speed", config.speed[1] * (config.num_frames - 1) + reach),
                         ("bounce", config.bounce[1] + reach), ("growth", reach * config.growth[1])):
        if extent > side:
            raise ValueError(f"{name}={getattr(config, name)}: a large object's path ({extent:.0f} px) does not "
                             f"fit in {config.height}x{config.width}")


def texture_period(config) -> int:
    """Stripe period in pixels (a quarter of the smaller side): bands and checks are half of it wide, noise
    cells a quarter."""
    return min(config.height, config.width) // 4


def _check(kind: str, split: str | None = None) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {KINDS}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS}")


def background_phrase(background: str, texture: str) -> str:
    return f"plain {background}" if texture == "plain" else f"{background} {texture}"


def object_phrase(kind: str, colour: str, shape: str, size: str, motion: str) -> str:
    if kind == "image":
        return f"{size} {colour} {shape} at the {motion}"
    verb = f"moving {motion}" if motion in DIRECTIONS else motion
    return f"{size} {colour} {shape} {verb}"


def make_prompt_v2(kind: str, background: str, texture: str, objects, template: int = 0) -> str:
    """The prompt of a v2 combination; `objects` holds (colour, shape, size, motion-or-position) tuples."""
    _check(kind)
    if not 0 <= template < len(TEMPLATES_V2):
        raise ValueError(f"template={template}: must be in [0, {len(TEMPLATES_V2) - 1}]")
    if not 1 <= len(objects) <= 2:
        raise ValueError(f"{len(objects)} objects: a v2 scene holds 1 or 2")
    phrase = " and a ".join(object_phrase(kind, *o) for o in objects)
    return TEMPLATES_V2[template].format(objects=phrase, background=background_phrase(background, texture))


def is_heldout(kind: str, combination: tuple, holdout: float = 0.125, seed: int = 0) -> bool:
    """Whether a v2 combination (see `SceneV2.combination`) belongs to the held-out split."""
    background, texture, objects = combination
    key = f"{seed}|{kind}|{background}|{texture}|" + "|".join(",".join(o) for o in sorted(objects))
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64 < holdout


def valid_combination(kind: str, combination: tuple, config=None) -> bool:
    """Objects differ in colour (and, in a still, in position), and two objects fit in one frame without
    touching (`feasible_pair`; checked when `config` is given)."""
    objects = combination[2]
    if len({o[0] for o in objects}) != len(objects):
        return False
    if len(objects) == 2:
        if kind == "image" and objects[0][3] == objects[1][3]:
            return False
        if config is not None and not feasible_pair(kind, objects[0][1:], objects[1][1:], config):
            return False
    return True


@lru_cache(maxsize=None)
def feasible_pair(kind: str, a: tuple, b: tuple, config) -> bool:
    """Whether objects of (shape, size, motion-or-position) `a` and `b` can share a frame `_FEASIBLE_TRIES`
    tries of a fixed generator found a placement: e.g. two large growing triangles cannot, in 64x64."""
    rng = np.random.default_rng(12345)
    first = ("red",) + tuple(a)
    second = ("blue",) + tuple(b)
    for _ in range(_FEASIBLE_TRIES):
        one = _place(rng, kind, first, config)
        if _apart((one, *object_track(one, kind, config)), _place(rng, kind, second, config), kind, config):
            return True
    return False


def _draw_combination(rng: np.random.Generator, kind: str, config) -> tuple:
    motions = MOTIONS if kind == "video" else tuple(POSITIONS_V2)
    count = 2 if rng.random() < config.two_objects else 1
    while True:
        objects = tuple((COLOURS_LIST[rng.integers(len(COLOURS_LIST))], SHAPES[rng.integers(len(SHAPES))],
                         SIZES[rng.integers(len(SIZES))], motions[rng.integers(len(motions))]) for _ in range(count))
        combo = (BACKGROUND_LIST[rng.integers(len(BACKGROUND_LIST))], TEXTURES[rng.integers(len(TEXTURES))],
                 objects)
        if valid_combination(kind, combo, config):
            return combo



def object_track(obj: SceneObject, kind: str, config) -> tuple[np.ndarray, np.ndarray]:
    """Centres `(F, 2)` and size radii `(F,)` of an object over the frames (F = 1 for a still)."""
    frames = config.num_frames if kind == "video" else 1
    t = np.arange(frames, dtype=np.float64)
    u = t / max(frames - 1, 1)
    centres = np.empty((frames, 2))
    centres[:, 0] = obj.start[0] + obj.velocity[0] * t
    centres[:, 1] = obj.start[1] + obj.velocity[1] * t
    if kind == "video" and obj.motion == "growing":
        return centres, obj.radius * (config.growth[0] + (config.growth[1] - config.growth[0]) * u)
    if kind == "video" and obj.motion == "bouncing":
        centres[:, 1] -= obj.amplitude * np.sin(np.pi * u)
    return centres, np.full(frames, obj.radius)


def _place(rng: np.random.Generator, kind: str, attrs: tuple, config) -> SceneObject:
    colour, shape, size, motion = attrs
    h, w = config.height, config.width
    radius = float(rng.uniform(*(config.small if size == "small" else config.large)))
    margin = TRIANGLE_R * radius + 1.0
    if kind == "image":
        ax, ay = POSITIONS_V2[motion]
        x = np.clip(ax * w + rng.uniform(-config.jitter, config.jitter), margin, w - margin)
        y = np.clip(ay * h + rng.uniform(-config.jitter, config.jitter), margin, h - margin)
        return SceneObject(colour, shape, size, motion, radius, (float(x), float(y)))
    if motion == "growing":
        margin = TRIANGLE_R * radius * config.growth[1] + 1.0
        start = (rng.uniform(margin, w - margin), rng.uniform(margin, h - margin))
        return SceneObject(colour, shape, size, motion, radius, (float(start[0]), float(start[1])))
    if motion == "bouncing":
        amplitude = float(rng.uniform(*config.bounce))
        start = (rng.uniform(margin, w - margin), rng.uniform(margin + amplitude, h - margin))
        return SceneObject(colour, shape, size, motion, radius, (float(start[0]), float(start[1])),
                           amplitude=amplitude)
    dx, dy = DIRECTIONS[motion]
    speed = rng.uniform(*config.speed)
    travel = speed * (config.num_frames - 1)
    lo_x, hi_x = margin + max(0.0, -dx * travel), w - margin - max(0.0, dx * travel)
    lo_y, hi_y = margin + max(0.0, -dy * travel), h - margin - max(0.0, dy * travel)
    start = (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)))
    return SceneObject(colour, shape, size, motion, radius, start, (float(dx * speed), float(dy * speed)))


def _apart(a: tuple, b: SceneObject, kind: str, config) -> bool:
    """Whether object `b` keeps clear of `a` (given as (object, centres, radii)) in every frame."""
    obj_a, ca, ra = a
    cb, rb = object_track(b, kind, config)
    need = CIRCUMRADIUS[obj_a.shape] * ra + CIRCUMRADIUS[b.shape] * rb + GAP
    d = ca - cb
    return bool(np.all(d[:, 0] ** 2 + d[:, 1] ** 2 >= need ** 2))


def _scene(rng: np.random.Generator, kind: str, combo: tuple, config) -> SceneV2:
    first = _place(rng, kind, combo[2][0], config)
    objects = (first,)
    if len(combo[2]) == 2:
        track = (first, *object_track(first, kind, config))
        for _ in range(_MAX_TRIES):
            second = _place(rng, kind, combo[2][1], config)
            if _apart(track, second, kind, config):
                break
            first = _place(rng, kind, combo[2][0], config)
            track = (first, *object_track(first, kind, config))
        else:  # pragma: no cover - feasible_pair admitted only pairs that fit
            raise RuntimeError(f"could not place {combo} in {config.height}x{config.width}")
        objects = (first, second)
    period = texture_period(config)
    return SceneV2(kind, combo[0], combo[1], objects, template=int(rng.integers(len(TEMPLATES_V2))),
                   texture_orientation=int(rng.integers(2)),
                   texture_phase=(float(rng.uniform(0, period)), float(rng.uniform(0, period))),
                   texture_angle=float(rng.uniform(0.0, 2.0 * np.pi)), texture_seed=int(rng.integers(2 ** 31)))


def sample_scenes_v2(n: int, kind: str, split: str = "train", seed: int = 0, config=None,
                     split_seed: int = 0) -> list[SceneV2]:
    """`n` v2 scenes of `split`, deterministic for `seed`: attributes uniform (objects: one or two with
    probability `config.two_objects`), combinations of the other split rejected, geometry uniform."""
    from .dataset import DataConfig

    config = config or DataConfig(version="v2")
    _check(kind, split)
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n={n!r}: must be an int >= 0")
    want_held = split == "heldout"
    rng = np.random.default_rng([seed, KINDS.index(kind), SPLITS.index(split), 2])
    scenes = []
    while len(scenes) < n:
        combo = _draw_combination(rng, kind, config)
        if is_heldout(kind, combo, config.holdout, split_seed) != want_held:
            continue
        scenes.append(_scene(rng, kind, combo, config))
    return scenes


def calibration_prompts_v2(kind: str, n: int = 8, seed: int = 0, config=None) -> list[str]:
    """`n` prompts of training combinations (disjoint from `evaluation_prompts_v2`)."""
    if not 1 <= n <= 10_000:
        raise ValueError(f"n={n}: must be in [1, 10000]")
    return [s.prompt for s in sample_scenes_v2(n, kind, "train", seed=1_000 + seed, config=config)]


def evaluation_prompts_v2(kind: str, n: int = 64, config=None) -> list[str]:
    """The first `n` prompts of held-out combinations, drawn with a fixed seed (the same list every time)."""
    if not 1 <= n <= 10_000:
        raise ValueError(f"n={n}: must be in [1, 10000]")
    return [s.prompt for s in sample_scenes_v2(n, kind, "heldout", seed=2_000, config=config)]
