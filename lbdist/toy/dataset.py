"""The procedural data set the toy models learn: one coloured shape on a background, as clips or stills.

A *scene* is one shape of a kind (`SHAPES`) and colour (`COLOURS`) over a uniform background
(`BACKGROUNDS`). In a clip it moves in a direction (`DIRECTIONS`) at a constant speed; in a still it sits
at a position (`POSITIONS`). Prompts come from a small grammar (two templates per kind), for example

    "a red circle moving left on a black background"      "navy background with a cyan square moving up"
    "a blue triangle at the top on a white background"    "gray background with a yellow circle at the center"

Every word is in `GRAMMAR_WORDS` (pass it to `word_tokenizer` / `build_pipeline(words=...)`).

Determinism: `sample_scenes(n, kind, split, seed)` draws scenes from a `numpy` generator seeded by `seed`
only, and `render(scene)` is a pure function of the scene, so the data set is the same for a seed on every
machine and can be generated on the fly at any size.

Splits: the attribute *combinations* (colour, shape, direction or position, background) are split once,
deterministically, into `train` and `heldout`; held-out combinations never appear in training, and every
pair of attribute values of a held-out combination still appears in training (so held-out prompts test
composition, not unseen words). Calibration prompts (LearniBridge calibration) come from the training
combinations, evaluation prompts from the held-out ones, so the two lists are disjoint.

Versions: everything above is data-set version "v1", the one the bundled toy models were trained on and the
default (`DataConfig(version="v1")`). `DataConfig(version="v2")` selects the richer scenes of `dataset_v2.py`
(one or two objects with sizes and motions, textured backgrounds); `sample_scenes`, `render`,
`render_batch`, `calibration_prompts`, `evaluation_prompts` and `grammar_words` dispatch on the version, and
v1 output is unchanged.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 230), "yellow": (235, 215, 40),
           "purple": (160, 50, 210), "cyan": (40, 210, 215)}
BACKGROUNDS = {"black": (15, 15, 15), "white": (240, 240, 240), "gray": (125, 125, 125), "navy": (20, 30, 100)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
POSITIONS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75),
             "center": (0.5, 0.5)}
KINDS = ("video", "image")
TEMPLATES = {
    "video": ("a {colour} {shape} moving {motion} on a {background} background",
              "{background} background with a {colour} {shape} moving {motion}"),
    "image": ("a {colour} {shape} at the {motion} on a {background} background",
              "{background} background with a {colour} {shape} at the {motion}"),
}
GRAMMAR_WORDS = tuple(dict.fromkeys(
    [*COLOURS, *BACKGROUNDS, *SHAPES, *DIRECTIONS, *POSITIONS, "background", "with", "at", "the", "moving"]))
SPLITS = ("train", "heldout")
DATA_VERSIONS = ("v1", "v2")

# Square half-side and triangle circumradius relative to the circle radius (similar visual sizes).
SQUARE_HALF = 0.85
TRIANGLE_R = 1.3


@dataclass(frozen=True)
class DataConfig:
    """Canvas and motion of the rendered scenes.

    Attributes:
        height, width: frame size in pixels (default 64x64; multiples of 16 keep every toy VAE and patch
            size happy). Smaller is faster to learn, larger shows the shape more clearly.
        num_frames: frames per clip (default 9: 4k+1 frames fit the 4x temporal compression of the Wan and
            HunyuanVideo VAEs, giving 3 latent frames).
        radius: range of the shape's size in pixels (circle radius; squares and triangles are scaled to look
            alike). Default 8-10 px on 64 px: large enough that the kind survives a 4x VAE.
        speed: range of the clip speed in pixels per frame (default 2-3: 16-24 px over 9 frames, clearly
            visible, and the shape stays inside the frame).
        jitter: random offset in pixels of a still's position around its anchor.
        holdout: fraction of attribute combinations held out of training (default 1/8).
        version: which data set, "v1" (default: one shape on a plain background, what the bundled toys
            learned) or "v2" (`dataset_v2.py`: one or two objects, sizes, growing / bouncing, textures).
            The fields below are read by v2 only; `radius` by v1 only.
        small, large: v2 radius ranges in pixels of the two size words (defaults 6.5-7.25 and 9.5-11 px on
            64 px: below about 6.5 px a decoder's blur makes squares look round). They must lie on either
            side of the metric's size split, `SIZE_SPLIT` x the frame's smaller side (8.5 px on 64 px), so
            scale them with the canvas.
        two_objects: v2 probability that a scene holds two objects (default 0.5).
        texture_amplitude: v2 grey-level amplitude of background textures on the 0-255 scale (default 24:
            clearly visible, far below the distance between a background and an object colour).
        bounce: v2 height range in pixels of a bouncing object's hop (default 12-18 px).
        growth: v2 radius factors of a growing object at the first and last frame (default 0.75 -> 1.25,
            so its median frame shows the named size).
    """

    height: int = 64
    width: int = 64
    num_frames: int = 9
    radius: tuple[float, float] = (8.0, 10.0)
    speed: tuple[float, float] = (2.0, 3.0)
    jitter: float = 3.0
    holdout: float = 0.125
    version: str = "v1"
    small: tuple[float, float] = (6.5, 7.25)
    large: tuple[float, float] = (9.5, 11.0)
    two_objects: float = 0.5
    texture_amplitude: float = 24.0
    bounce: tuple[float, float] = (12.0, 18.0)
    growth: tuple[float, float] = (0.75, 1.25)

    def __post_init__(self):
        for name in ("height", "width"):
            value = getattr(self, name)
            if not (16 <= value <= 1024 and value % 16 == 0):
                raise ValueError(f"{name}={value}: must be a multiple of 16 in [16, 1024]")
        if not (1 <= self.num_frames <= 257 and (self.num_frames - 1) % 4 == 0):
            raise ValueError(f"num_frames={self.num_frames}: must be 4k+1 in [1, 257]")
        if self.version not in DATA_VERSIONS:
            raise ValueError(f"version={self.version!r}: must be one of {DATA_VERSIONS}")
        if not (0.0 <= self.jitter <= min(self.height, self.width) / 8):
            raise ValueError(f"jitter={self.jitter}: must be in [0, {min(self.height, self.width) / 8}]")
        if not (0.0 < self.holdout < 0.5):
            raise ValueError(f"holdout={self.holdout}: must be in (0, 0.5)")
        if self.version == "v2":
            from .dataset_v2 import check_config

            check_config(self)
        else:
            self._check_v1()

    def _check_v1(self):
        lo, hi = self.radius
        if not (2.0 <= lo <= hi <= min(self.height, self.width) / 5):
            raise ValueError(f"radius={self.radius}: need 2 <= low <= high <= {min(self.height, self.width) / 5}")
        lo_s, hi_s = self.speed
        if not (0.0 < lo_s <= hi_s):
            raise ValueError(f"speed={self.speed}: need 0 < low <= high")
        travel = hi_s * (self.num_frames - 1) + 2 * TRIANGLE_R * hi + 2
        if travel > min(self.height, self.width):
            raise ValueError(f"speed={self.speed} x {self.num_frames - 1} frames plus the shape "
                             f"({travel:.0f} px) does not fit in {self.height}x{self.width}")


@dataclass(frozen=True)
class Scene:
    """One sample: what the prompt says plus the geometry the prompt leaves open.

    `motion` is a direction (`DIRECTIONS`) for a video and a position (`POSITIONS`) for an image;
    `start` is the shape's centre in pixels at frame 0 and `velocity` its motion in pixels per frame.
    """

    kind: str
    colour: str
    shape: str
    motion: str
    background: str
    template: int = 0
    radius: float = 9.0
    start: tuple[float, float] = (32.0, 32.0)
    velocity: tuple[float, float] = (0.0, 0.0)

    @property
    def combination(self) -> tuple[str, str, str, str]:
        return (self.colour, self.shape, self.motion, self.background)

    @property
    def prompt(self) -> str:
        return make_prompt(self.kind, *self.combination, template=self.template)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {KINDS}")


def make_prompt(kind: str, colour: str, shape: str, motion: str, background: str, template: int = 0) -> str:
    """The prompt of one combination with template `template` (0 or 1)."""
    _check_kind(kind)
    if not 0 <= template < len(TEMPLATES[kind]):
        raise ValueError(f"template={template}: must be in [0, {len(TEMPLATES[kind]) - 1}]")
    return TEMPLATES[kind][template].format(colour=colour, shape=shape, motion=motion, background=background)


def all_combinations(kind: str) -> list[tuple[str, str, str, str]]:
    """Every (colour, shape, direction-or-position, background) of `kind`, in a fixed order."""
    _check_kind(kind)
    motions = DIRECTIONS if kind == "video" else POSITIONS
    return list(itertools.product(COLOURS, SHAPES, motions, BACKGROUNDS))


def _pairs(combo) -> set:
    return {(i, a, j, b) for (i, a), (j, b) in itertools.combinations(enumerate(combo), 2)}


@lru_cache(maxsize=None)
def _split(kind: str, holdout: float, seed: int) -> tuple[tuple, tuple]:
    combos = all_combinations(kind)
    n_held = max(1, round(holdout * len(combos)))
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    for _ in range(1000):
        order = rng.permutation(len(combos))
        held = [combos[i] for i in sorted(order[:n_held])]
        train = [combos[i] for i in sorted(order[n_held:])]
        seen = set().union(*(_pairs(c) for c in train))
        if all(_pairs(c) <= seen for c in held):
            return tuple(train), tuple(held)
    raise RuntimeError(f"no split of {len(combos)} combinations keeps every pair in training")  # pragma: no cover


def split_combinations(kind: str, split: str, config: DataConfig = DataConfig(), seed: int = 0) -> list[tuple]:
    """The combinations of `split` ("train" or "heldout"); the same for a given kind, holdout and seed.

    v1 only: v2 has too many combinations to list; `dataset_v2.is_heldout` decides membership instead.
    """
    _check_kind(kind)
    if config.version != "v1":
        raise ValueError(f"version={config.version!r}: split_combinations lists v1 combinations only; "
                         f"use dataset_v2.is_heldout for v2")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS}")
    train, held = _split(kind, config.holdout, seed)
    return list(train if split == "train" else held)


def _geometry(kind: str, motion: str, radius: float, rng: np.random.Generator, config: DataConfig):
    h, w = config.height, config.width
    margin = TRIANGLE_R * radius + 1.0
    if kind == "image":
        ax, ay = POSITIONS[motion]
        x = np.clip(ax * w + rng.uniform(-config.jitter, config.jitter), margin, w - margin)
        y = np.clip(ay * h + rng.uniform(-config.jitter, config.jitter), margin, h - margin)
        return (float(x), float(y)), (0.0, 0.0)
    dx, dy = DIRECTIONS[motion]
    speed = rng.uniform(*config.speed)
    travel = speed * (config.num_frames - 1)
    # along the motion: start so that the whole path stays inside; across it: anywhere inside
    lo_x, hi_x = margin + max(0.0, -dx * travel), w - margin - max(0.0, dx * travel)
    lo_y, hi_y = margin + max(0.0, -dy * travel), h - margin - max(0.0, dy * travel)
    return (float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y))), (dx * speed, dy * speed)


def sample_scenes(n: int, kind: str, split: str = "train", seed: int = 0, config: DataConfig = DataConfig(),
                  split_seed: int = 0) -> list[Scene]:
    """`n` scenes of `kind` from the combinations of `split`, deterministic for `seed`.

    Combinations are drawn uniformly, templates uniformly, geometry uniformly within `config`'s ranges.
    `split_seed` selects the train / held-out split (keep the default to match the shipped models).
    """
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"n={n!r}: must be an int >= 0")
    if config.version == "v2":
        from .dataset_v2 import sample_scenes_v2

        return sample_scenes_v2(n, kind, split, seed, config, split_seed)
    combos = split_combinations(kind, split, config, split_seed)
    rng = np.random.default_rng([seed, KINDS.index(kind), SPLITS.index(split)])
    scenes = []
    for _ in range(n):
        colour, shape, motion, background = combos[rng.integers(len(combos))]
        template = int(rng.integers(len(TEMPLATES[kind])))
        radius = float(rng.uniform(*config.radius))
        start, velocity = _geometry(kind, motion, radius, rng, config)
        scenes.append(Scene(kind, colour, shape, motion, background, template, radius, start, velocity))
    return scenes


def shape_mask(shape: str, cx, cy, radius: float, height: int, width: int) -> np.ndarray:
    """Boolean masks `(..., H, W)` of `shape` centred at (cx, cy) (scalars or arrays of centres)."""
    if shape not in SHAPES:
        raise ValueError(f"shape={shape!r}: must be one of {SHAPES}")
    cx = np.asarray(cx, dtype=np.float64)[..., None, None]
    cy = np.asarray(cy, dtype=np.float64)[..., None, None]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5  # pixel centres
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = SQUARE_HALF * radius
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # triangle pointing up, centroid at (cx, cy): apex (0, -R), base corners (+-R sin60, R/2)
    r = TRIANGLE_R * radius
    s = np.sqrt(3.0) / 2.0
    return (dy <= r / 2) & (s * dx + 0.5 * dy >= -r / 2) & (-s * dx + 0.5 * dy >= -r / 2)


def render(scene: Scene, config: DataConfig = DataConfig()) -> np.ndarray:
    """uint8 frames `(F, H, W, 3)` of a video scene, or one image `(H, W, 3)` of an image scene."""
    if getattr(scene, "version", "v1") == "v2":
        from .render_v2 import render_v2

        return render_v2([scene], config)[0].numpy()
    frames = config.num_frames if scene.kind == "video" else 1
    t = np.arange(frames, dtype=np.float64)
    cx = scene.start[0] + scene.velocity[0] * t
    cy = scene.start[1] + scene.velocity[1] * t
    mask = shape_mask(scene.shape, cx, cy, scene.radius, config.height, config.width)
    out = np.empty((frames, config.height, config.width, 3), dtype=np.uint8)
    out[:] = np.asarray(BACKGROUNDS[scene.background], dtype=np.uint8)
    out[mask] = np.asarray(COLOURS[scene.colour], dtype=np.uint8)
    return out if scene.kind == "video" else out[0]


def render_batch(scenes: list[Scene], config: DataConfig = DataConfig()) -> np.ndarray:
    """Stacked renders: `(N, F, H, W, 3)` for videos, `(N, H, W, 3)` for images."""
    if scenes and getattr(scenes[0], "version", "v1") == "v2":
        from .render_v2 import render_v2

        return render_v2(scenes, config).numpy()
    return np.stack([render(s, config) for s in scenes])


def calibration_prompts(kind: str, n: int = 8, seed: int = 0, config: DataConfig = DataConfig()) -> list[str]:
    """`n` prompts of training combinations, for LearniBridge calibration (disjoint from evaluation)."""
    if config.version == "v2":
        from .dataset_v2 import calibration_prompts_v2

        return calibration_prompts_v2(kind, n, seed, config)
    combos = split_combinations(kind, "train", config)
    if not 1 <= n <= len(combos):
        raise ValueError(f"n={n}: must be in [1, {len(combos)}]")
    rng = np.random.default_rng([seed, 101, KINDS.index(kind)])
    picks = rng.choice(len(combos), size=n, replace=False)
    return [make_prompt(kind, *combos[i], template=j % 2) for j, i in enumerate(picks)]


def evaluation_prompts(kind: str, n: int | None = None, config: DataConfig = DataConfig()) -> list[str]:
    """Prompts of held-out combinations (never seen in training), templates alternating; the first `n`.

    v2 has no finite list: `n` defaults to 64 prompts drawn with a fixed seed (`dataset_v2`).
    """
    if config.version == "v2":
        from .dataset_v2 import evaluation_prompts_v2

        return evaluation_prompts_v2(kind, 64 if n is None else n, config)
    combos = split_combinations(kind, "heldout", config)
    n = len(combos) if n is None else n
    if not 1 <= n <= len(combos):
        raise ValueError(f"n={n}: must be in [1, {len(combos)}]")
    return [make_prompt(kind, *c, template=j % 2) for j, c in enumerate(combos[:n])]


def grammar_words(version: str = "v1") -> tuple[str, ...]:
    """Every word of the prompts of data-set `version` (the vocabulary of the toy tokenizers)."""
    if version not in DATA_VERSIONS:
        raise ValueError(f"version={version!r}: must be one of {DATA_VERSIONS}")
    if version == "v2":
        from .dataset_v2 import GRAMMAR_WORDS_V2

        return GRAMMAR_WORDS_V2
    return GRAMMAR_WORDS
