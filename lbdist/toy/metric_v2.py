"""Prompt adherence of v2 samples (`dataset_v2.py`), by image analysis alone; `metric.adherence` dispatches here.

Each attribute the prompt names is checked and scored 1 or 0; the score is the fraction that match:
background colour and texture, then per object its colour, shape, size and motion (clips) or position
(stills), the object count, and for two objects their *binding*. Exactly:

- **foreground**: the background is its colour plus a grey-level texture, so a pixel is background when it
  lies near the grey line through the background colour `b0` (the mean of the 2 px border ring, objects
  excluded): foreground iff its distance off that line exceeds `FG_ORTH` (40 on 0-255 RGB; every object
  colour is >= 82 off every background's line) or its grey offset exceeds `FG_ALONG` (75; textures reach
  24 sqrt 3 = 42).
- **background**: trimmed mean RGB (10-90th percentile per channel) of the background pixels, nearest of
  `BACKGROUNDS`. **texture**: the grey offsets of background pixels (away from objects, averaged over
  frames) are `plain` if their std is < `PLAIN_STD`; `gradient` if a plane explains >= `GRADIENT_R2` of their
  variance; `striped` if row or column means explain >= `STRIPE_SHARE`; `checkered` if a checkerboard of
  squares an eighth of the frame correlates >= `CHECK_CORR` (best phase); `noisy` otherwise.
- **objects**: 4-connected foreground components of at least `MIN_AREA` of the frame; their number in most
  frames is the object count; components are linked across frames by colour and position into tracks.
  Per track: colour = median RGB, nearest of `COLOURS`; shape = majority of per-frame template IoU
  (`classify_shape_v2`: like v1, plus squares with rounded corners, so blur keeps a square a square);
  size = median radius of the shape with the component's area, "small" below `SIZE_SPLIT` x the frame's
  smaller side; position = nearest anchor of `POSITIONS_V2`; motion = `bouncing` if a parabola fit
  of the height rises and falls back by >= `MIN_TRAVEL` of the frame with its top inside the clip,
  `growing` if the fitted area grows >= `GROWTH_RATIO` x and the centre stays, else left/right/up/down from
  the fitted straight-line displacement (>= `MIN_TRAVEL`), else none.
- **assignment**: prompt objects are matched to tracks by the assignment with the most matching attributes
  (colour matches break ties); per-object attributes are scored under it. **count**: tracks == objects.
  **binding** (two objects): each colour named is found, and pairing objects by colour is at least as good
  for the other attributes (shape, size, motion or position) as the other pairing: a scene whose objects
  swapped colours, shapes or motions fails it.

Ground-truth renders score 1.0 (tests/test_metric_v2.py, for every kind of attribute) and each corrupted
attribute lowers the score.
"""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np

from ..io import to_uint8_frames
from .dataset import BACKGROUNDS, COLOURS, SHAPES, SQUARE_HALF, TRIANGLE_R, shape_mask
from .dataset_v2 import MOTIONS, POSITIONS_V2, SIZE_SPLIT, SIZES, TEXTURES

FG_ORTH = 40.0
FG_ALONG = 75.0
MIN_AREA = 0.003
MIN_TRAVEL = 0.10
PLAIN_STD = 12.0
GRADIENT_R2 = 0.6
STRIPE_SHARE = 0.5
CHECK_CORR = 0.5
GROWTH_RATIO = 1.8
BORDER = 2
ROUNDING = (0.0, 0.25, 0.5, 0.75, 1.0)  # corner radii / half-side of the square templates
OBJECT_ATTRIBUTES = ("colour", "shape", "size", "motion")
_GREY = np.ones(3) / np.sqrt(3.0)
_AREA_PER_R2 = {"circle": np.pi, "square": (2 * SQUARE_HALF) ** 2, "triangle": 3 * np.sqrt(3) / 4 * TRIANGLE_R ** 2}


def is_v2_prompt(prompt: str) -> bool:
    """v2 prompts name a size for every object; v1 prompts never do."""
    return any(w in SIZES for w in prompt.lower().replace(",", " ").split())


def _object_at(words: list[str], i: int, prompt: str) -> tuple[str, dict]:
    size, colour = words[i - 2] if i >= 2 else None, words[i - 1] if i >= 1 else None
    nxt = words[i + 1] if i + 1 < len(words) else None
    if nxt == "moving" and i + 2 < len(words):
        kind, motion = "video", words[i + 2]
    elif nxt in ("growing", "bouncing"):
        kind, motion = "video", nxt
    elif nxt == "at" and i + 3 < len(words):
        kind, motion = "image", words[i + 3]
    else:
        raise ValueError(f"prompt {prompt!r}: {words[i]!r} is followed by neither 'moving <direction>', "
                         f"'growing', 'bouncing' nor 'at the <position>'")
    allowed = MOTIONS if kind == "video" else tuple(POSITIONS_V2)
    for value, options, what in ((size, SIZES, "size"), (colour, tuple(COLOURS), "colour"),
                                 (motion, allowed, "motion" if kind == "video" else "position")):
        if value not in options:
            raise ValueError(f"prompt {prompt!r}: {what} {value!r} is not one of {list(options)}")
    return kind, {"colour": colour, "shape": words[i], "size": size, "motion": motion}


def parse_prompt_v2(prompt: str) -> dict:
    """kind, background, texture and the objects (colour, shape, size, motion-or-position) of a v2 prompt."""
    words = prompt.lower().replace(",", " ").split()
    shapes = [i for i, w in enumerate(words) if w in SHAPES]
    if not 1 <= len(shapes) <= 2 or words.count("background") != 1:
        raise ValueError(f"prompt {prompt!r} is not in the v2 grammar (needs 1 or 2 of {SHAPES} and one "
                         f"'background')")
    b = words.index("background")
    colours = [w for w in words[max(b - 2, 0):b] if w in BACKGROUNDS]
    textures = [w for w in words[max(b - 2, 0):b] if w in TEXTURES]
    if len(colours) != 1 or len(textures) != 1:
        raise ValueError(f"prompt {prompt!r}: the two words before 'background' must be a colour of "
                         f"{list(BACKGROUNDS)} and a texture of {list(TEXTURES)}")
    parsed = [_object_at(words, i, prompt) for i in shapes]
    kinds = {k for k, _ in parsed}
    if len(kinds) != 1:
        raise ValueError(f"prompt {prompt!r} mixes motions and positions")
    return {"kind": kinds.pop(), "background": colours[0], "texture": textures[0],
            "objects": [o for _, o in parsed]}


def _background_model(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """b0 and, per pixel, the grey offset from it (`along`) and the distance off its grey line (`orth`)."""
    h, w = arr.shape[1:3]
    ring = np.ones((h, w), dtype=bool)
    ring[BORDER:h - BORDER, BORDER:w - BORDER] = False
    pixels = arr[:, ring].reshape(-1, 3)
    median = np.median(pixels, axis=0)
    d = pixels - median
    off = np.linalg.norm(d - np.outer(d @ _GREY, _GREY), axis=1)
    b0 = pixels[off <= FG_ORTH].mean(axis=0) if (off <= FG_ORTH).any() else median
    d = arr - b0
    along = d @ _GREY
    orth = np.linalg.norm(d - along[..., None] * _GREY, axis=-1)
    return b0, along, orth


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[..., 1:, :] |= mask[..., :-1, :]
    out[..., :-1, :] |= mask[..., 1:, :]
    out[..., :, 1:] |= mask[..., :, :-1]
    out[..., :, :-1] |= mask[..., :, 1:]
    return out


def _texture(along: np.ndarray, background: np.ndarray) -> str:
    """Texture class of the grey offsets `along` `(F, H, W)` over the background pixels (see the docstring)."""
    count = background.sum(axis=0)
    valid = count > 0
    if valid.sum() < 16:
        return "plain"
    r = np.where(valid, (along * background).sum(axis=0) / np.maximum(count, 1), 0.0)
    r = np.where(valid, r - r[valid].mean(), 0.0)
    total = float((r ** 2).sum())
    if np.sqrt(total / valid.sum()) < PLAIN_STD:
        return "plain"
    ys, xs = np.nonzero(valid)
    design = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, r[valid], rcond=None)
    if 1.0 - float(((r[valid] - design @ coef) ** 2).sum()) / total >= GRADIENT_R2:
        return "gradient"
    shares = [float((r.sum(axis=a) ** 2 / np.maximum(valid.sum(axis=a), 1)).sum()) / total for a in (0, 1)]
    if max(shares) >= STRIPE_SHARE:
        return "striped"
    h, w = r.shape
    cell = max(min(h, w) // 8, 1)
    waves = lambda n: np.stack([1.0 - 2.0 * ((np.arange(n) + 0.5 + p) // cell % 2) for p in range(cell)])
    corr = np.abs(waves(h) @ r @ waves(w).T) / np.sqrt(valid.sum() * total)
    return "checkered" if corr.max() >= CHECK_CORR else "noisy"


def _components(mask: np.ndarray, min_area: float) -> list[list[np.ndarray]]:
    """Per frame, the masks of the 4-connected components of `mask` `(F, H, W)` with at least `min_area` px."""
    n, h, w = mask.shape
    labels = np.where(mask, np.arange(1, n * h * w + 1).reshape(n, h, w), 0)
    p = np.zeros((n, h + 2, w + 2), dtype=labels.dtype)
    while True:
        p[:, 1:-1, 1:-1] = labels
        new = np.maximum.reduce([labels, p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]) * mask
        if np.array_equal(new, labels):
            break
        labels = new
    out = []
    for i in range(n):
        ids, counts = np.unique(labels[i][mask[i]], return_counts=True)
        keep = ids[counts >= min_area][np.argsort(-counts[counts >= min_area], kind="stable")]
        out.append([labels[i] == k for k in keep])
    return out


def _describe(arr: np.ndarray, comp: np.ndarray) -> dict:
    ys, xs = np.nonzero(comp)
    return {"mask": comp, "centroid": np.array([xs.mean() + 0.5, ys.mean() + 0.5]), "area": float(comp.sum()),
            "rgb": np.median(arr[comp], axis=0)}


def _link(frames: list[list[dict]], count: int) -> list[dict[int, dict]]:
    """Tracks (frame index -> component) of `count` objects, linked by colour and position."""
    start = next(i for i, comps in enumerate(frames) if len(comps) == count)
    tracks = [{start: c} for c in frames[start]]
    order = list(range(start + 1, len(frames))) + list(range(start - 1, -1, -1))
    for i in order:
        comps = frames[i]
        near = [t[min(t, key=lambda j: abs(j - i))] for t in tracks]

        def cost(perm):
            return sum(np.linalg.norm(near[k]["rgb"] - comps[c]["rgb"]) / 100.0
                       + np.linalg.norm(near[k]["centroid"] - comps[c]["centroid"]) / 8.0 for k, c in perm)

        if len(comps) >= count:
            pairs = [list(zip(range(count), cs)) for cs in itertools.permutations(range(len(comps)), count)]
        else:
            pairs = [list(zip(ks, range(len(comps)))) for ks in itertools.permutations(range(count), len(comps))]
        for k, c in min(pairs, key=cost, default=[]):
            tracks[k][i] = comps[c]
    return tracks


def _motion(track: dict[int, dict], n: int, h: int, w: int) -> str | None:
    t = np.array(sorted(track), dtype=np.float64)
    if len(t) < 3:
        return None
    pts = np.array([track[int(i)]["centroid"] for i in t])
    area = np.array([track[int(i)]["area"] for i in t])
    dx, dy = np.polyfit(t, pts, 1)[0] * (n - 1)
    a, b, c = np.polyfit(t, pts[:, 1], 2)
    if a > 0 and 0.2 * (n - 1) < -b / (2 * a) < 0.8 * (n - 1):
        top = c - b * b / (4 * a)
        hop = min(c, a * (n - 1) ** 2 + b * (n - 1) + c) - top
        if hop >= MIN_TRAVEL * h and np.hypot(dx, dy) < hop:
            return "bouncing"
    growth = np.exp(np.polyfit(t, np.log(area), 1)[0] * (n - 1))
    if growth >= GROWTH_RATIO and max(abs(dx) / w, abs(dy) / h) < MIN_TRAVEL:
        return "growing"
    if max(abs(dx) / w, abs(dy) / h) >= MIN_TRAVEL:
        return ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    return None


def _rounded_square(cx: float, cy: float, half: float, k: float, h: int, w: int) -> np.ndarray:
    """Mask of a square of half-side `half` whose corners are rounded with radius `k * half` (k = 1: circle)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    ax, ay, inner = np.abs(xs - cx), np.abs(ys - cy), half * (1.0 - k)
    corner = np.maximum(ax - inner, 0.0) ** 2 + np.maximum(ay - inner, 0.0) ** 2 <= (k * half) ** 2 + 1e-9
    return (ax <= half) & (ay <= half) & corner


def classify_shape_v2(mask: np.ndarray) -> str:
    """circle, square or triangle: the best IoU among templates of the component's area on its centroid.

    Squares with corners rounded by up to half their half-side count as squares and rounder ones as circles
    (k = 0.75, 1), so a square whose corners a decoder blurred is still a square (v1's classifier, kept for
    v1 scores, calls small blurred squares circles)."""
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    reach = int(np.ceil(np.sqrt(area) * 1.6)) + 2  # every template lies within this of the centroid
    y0, x0 = max(0, min(ys.min(), int(cy) - reach)), max(0, min(xs.min(), int(cx) - reach))
    crop = mask[y0:max(ys.max() + 1, int(cy) + reach), x0:max(xs.max() + 1, int(cx) + reach)]
    cx, cy = cx - x0, cy - y0
    iou = lambda t: (t & crop).sum() / max((t | crop).sum(), 1)
    scores = {}
    for k in ROUNDING:
        half = np.sqrt(area / (4.0 - (4.0 - np.pi) * k * k))
        name = "square" if k <= 0.5 else "circle"
        scores[name] = max(scores.get(name, 0.0), iou(_rounded_square(cx, cy, half, k, *crop.shape)))
    tri = np.sqrt(area / _AREA_PER_R2["triangle"])
    scores["triangle"] = iou(shape_mask("triangle", cx, cy, tri, *crop.shape))
    return max(scores, key=scores.get)


def _object(arr: np.ndarray, track: dict[int, dict], video: bool) -> dict:
    comps = [track[i] for i in sorted(track)]
    n, h, w = arr.shape[:3]
    shape = Counter(classify_shape_v2(c["mask"]) for c in comps).most_common(1)[0][0]
    radius = np.median([np.sqrt(c["area"] / _AREA_PER_R2[shape]) for c in comps])
    colour_rgb = np.median(np.concatenate([arr[i][track[i]["mask"]] for i in sorted(track)]), axis=0)
    names = list(COLOURS)
    colour = names[int(np.argmin(np.linalg.norm(np.array([COLOURS[k] for k in names]) - colour_rgb, axis=1)))]
    if video:
        motion = _motion(track, n, h, w)
    else:
        mid = comps[0]["centroid"] / (w, h)
        motion = min(POSITIONS_V2, key=lambda k: np.linalg.norm(mid - np.asarray(POSITIONS_V2[k])))
    return {"colour": colour, "shape": shape, "size": "small" if radius < SIZE_SPLIT * min(h, w) else "large",
            "motion": motion, "area": float(np.mean([c["area"] for c in comps]))}


def analyse_v2(frames) -> dict:
    """What v2 frames show: background, texture, and the objects (colour, shape, size, motion-or-position)."""
    arr = to_uint8_frames(frames).astype(np.float64)
    n, h, w = arr.shape[:3]
    _, along, orth = _background_model(arr)
    fg = (orth > FG_ORTH) | (np.abs(along) > FG_ALONG)
    bg = ~fg
    trim = arr[bg] if bg.any() else arr.reshape(-1, 3)
    lo, hi = np.percentile(trim, [10, 90], axis=0)
    rgb = np.array([c[(c >= l) & (c <= u)].mean() for c, l, u in zip(trim.T, lo, hi)])
    names = list(BACKGROUNDS)
    background = names[int(np.argmin(np.linalg.norm(np.array([BACKGROUNDS[k] for k in names]) - rgb, axis=1)))]
    texture = _texture(along, ~_dilate(fg))
    components = _components(fg, MIN_AREA * h * w)
    frames_comps = [[_describe(arr[i], c) for c in comps[:3]] for i, comps in enumerate(components)]
    counts = Counter(len(c) for c in frames_comps)
    count = max(counts, key=lambda k: (counts[k], k))
    objects = []
    if count:
        tracks = _link(frames_comps, count)
        objects = sorted((_object(arr, t, n > 1) for t in tracks if t), key=lambda o: -o["area"])
    return {"background": background, "texture": texture, "count": count, "objects": objects}


def _matches(want: dict, got: dict | None) -> list[bool]:
    return [got is not None and got[a] == want[a] for a in OBJECT_ATTRIBUTES]


def _assignments(k: int, m: int) -> list[tuple]:
    """Every way to give each of k prompt objects a distinct track index (or None when tracks run out)."""
    pool = list(range(m)) + [None] * k
    return sorted(set(itertools.permutations(pool, k)), key=lambda p: [k + 1 if i is None else i for i in p])


def _binding(want: list[dict], got: list[dict]) -> bool:
    by_colour = []
    for o in want:
        hits = [j for j, g in enumerate(got) if g["colour"] == o["colour"]]
        if not hits:
            return False
        by_colour.append(hits[0])
    if len(set(by_colour)) != len(by_colour):
        return False
    rest = lambda assign: sum(want[i][a] == got[j][a] for i, j in enumerate(assign) for a in OBJECT_ATTRIBUTES[1:])
    best = max(rest(p) for p in itertools.permutations(range(len(got)), len(want)))
    return rest(by_colour) >= best


def adherence_v2(frames, prompt: str):
    """The `metric.Adherence` of frames to a v2 prompt (see the module docstring)."""
    from .metric import Adherence

    want = parse_prompt_v2(prompt)
    found = analyse_v2(frames)
    objs, got = want["objects"], found["objects"]
    motion_key = "motion" if want["kind"] == "video" else "position"

    def total(assign):
        m = [_matches(o, None if j is None else got[j]) for o, j in zip(objs, assign)]
        return sum(map(sum, m)), sum(x[0] for x in m)

    best = max(_assignments(len(objs), len(got)), key=total)
    expected = {"background": want["background"], "texture": want["texture"], "count": len(objs)}
    result = {"background": found["background"], "texture": found["texture"], "count": len(got)}
    for i, (o, j) in enumerate(zip(objs, best), start=1):
        for a in OBJECT_ATTRIBUTES:
            key = f"{motion_key if a == 'motion' else a}.{i}"
            expected[key], result[key] = o[a], (None if j is None else got[j][a])
    if len(objs) == 2:
        expected["binding"], result["binding"] = True, len(got) >= 2 and _binding(objs, got)
    score = float(np.mean([result[k] == v for k, v in expected.items()]))
    return Adherence(score=score, expected=expected, found=result)
