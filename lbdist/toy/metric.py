"""Prompt adherence of a generated clip or image, by image analysis alone (no downloaded weights).

`adherence(frames, prompt)` parses the prompt with the toy grammar (`dataset.py`) and checks four
attributes in the frames; the score is the fraction that match (0, 0.25, ..., 1). `mean_adherence`
averages it over samples. What is checked, exactly:

1. **background**: the median RGB of the border ring (2 px wide, all frames) is a first estimate `b0`;
   pixels farther than `FG_THRESHOLD` (60 on the 0-255 RGB scale, about half the smallest distance between
   a shape colour and a background colour) from `b0` are *foreground*; the median RGB of all other pixels is
   the background colour, classified as the nearest of `BACKGROUNDS` (Euclidean RGB). Match: equals the
   prompt's background word.
2. **colour**: in each frame the shape is the largest 4-connected foreground component, if it covers at
   least `MIN_AREA` (0.3 %) of the frame; the median RGB of the shape pixels of all frames, nearest of
   `COLOURS`. No shape in any frame -> no match.
3. **shape**: in each frame with a shape, the component is compared by IoU with a circle, a square and an
   upward triangle of the same area centred on its centroid; the kind with the highest IoU wins, and a
   majority vote over frames decides. Match: equals the prompt's shape word.
4. **motion** (clips): the shape's centroid is fitted with a straight line over the frames where it was
   found (at least 2); the fitted displacement from the first to the last frame must be at least
   `MIN_TRAVEL` (10 %) of the frame size, and its dominant axis and sign give left/right/up/down.
   **position** (stills): the centroid, in fractions of the frame size, is classified as the nearest anchor
   of `POSITIONS` (left, right, top, bottom, center).

Ground-truth renders score 1.0 for every combination (tests/test_metric.py); a wrong colour, shape,
direction, position or background costs 0.25 each; an empty frame keeps only the background.

That is data-set v1. Prompts of v2 (`dataset_v2.py`: sizes, two objects, textures) are recognised by their
size words and scored by `metric_v2.py` with the same `Adherence` result; `Adherence.attribute_scores` groups
per-object results by attribute for both.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..io import to_uint8_frames
from .dataset import BACKGROUNDS, COLOURS, DIRECTIONS, POSITIONS, SHAPES, SQUARE_HALF, TRIANGLE_R, shape_mask

FG_THRESHOLD = 60.0
MIN_AREA = 0.003
MIN_TRAVEL = 0.10
BORDER = 2
_TRIANGLE_AREA = 3.0 * np.sqrt(3.0) / 4.0 * TRIANGLE_R ** 2  # area of the triangle of radius 1


@dataclass(frozen=True)
class Adherence:
    """One sample's result: `score` in [0, 1], and per attribute the expected and the found value."""

    score: float
    expected: dict = field(default_factory=dict)
    found: dict = field(default_factory=dict)

    @property
    def matches(self) -> dict:
        return {k: self.found.get(k) == v for k, v in self.expected.items()}

    @property
    def attribute_scores(self) -> dict:
        """Fraction matched per attribute name: v2 keys `colour.1`, `colour.2` count as one `colour`."""
        groups: dict[str, list[bool]] = {}
        for key, ok in self.matches.items():
            groups.setdefault(key.split(".")[0], []).append(ok)
        return {k: float(np.mean(v)) for k, v in groups.items()}


def parse_prompt(prompt: str) -> dict:
    """The attributes a grammar prompt asks for: kind, colour, shape, background, direction or position."""
    words = prompt.lower().replace(",", " ").split()
    shapes = [i for i, w in enumerate(words) if w in SHAPES]
    if len(shapes) != 1 or "background" not in words:
        raise ValueError(f"prompt {prompt!r} is not in the toy grammar (needs one of {SHAPES} and 'background')")
    i = shapes[0]
    colour, background = words[i - 1] if i else None, words[words.index("background") - 1]
    out = {"colour": colour, "shape": words[i], "background": background}
    if "moving" in words and words.index("moving") + 1 < len(words):
        out["kind"], out["direction"] = "video", words[words.index("moving") + 1]
        allowed = DIRECTIONS
    elif "at" in words and words.index("at") + 2 < len(words):
        out["kind"], out["position"] = "image", words[words.index("at") + 2]
        allowed = POSITIONS
    else:
        raise ValueError(f"prompt {prompt!r} has neither 'moving <direction>' nor 'at the <position>'")
    key = "direction" if out["kind"] == "video" else "position"
    if colour not in COLOURS or background not in BACKGROUNDS or out[key] not in allowed:
        raise ValueError(f"prompt {prompt!r} uses words outside the toy grammar: colour {colour!r} "
                         f"(one of {list(COLOURS)}), background {background!r} (one of {list(BACKGROUNDS)}), "
                         f"{key} {out[key]!r} (one of {list(allowed)})")
    return out


def _nearest(rgb: np.ndarray, palette: dict) -> str:
    names = list(palette)
    dist = np.linalg.norm(np.asarray([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    return names[int(np.argmin(dist))]


def _largest_components(mask: np.ndarray) -> np.ndarray:
    """Per frame, the largest 4-connected component of a boolean mask `(F, H, W)` (label propagation)."""
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    rows, cols = np.nonzero(mask.any(axis=(0, 2)))[0], np.nonzero(mask.any(axis=(0, 1)))[0]
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    out[box] = _largest_in_box(mask[box])
    return out


def _largest_in_box(mask: np.ndarray) -> np.ndarray:
    n, h, w = mask.shape
    labels = np.where(mask, np.arange(1, n * h * w + 1).reshape(n, h, w), 0)
    p = np.zeros((n, h + 2, w + 2), dtype=labels.dtype)
    while True:
        p[:, 1:-1, 1:-1] = labels
        new = np.maximum.reduce([labels, p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]])
        new *= mask
        if np.array_equal(new, labels):
            break
        labels = new
    out = np.zeros_like(mask)
    for i in range(n):
        if mask[i].any():
            ids, counts = np.unique(labels[i][mask[i]], return_counts=True)
            out[i] = labels[i] == ids[np.argmax(counts)]
    return out


def _classify_shape(mask: np.ndarray) -> str:
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    radius = {"circle": np.sqrt(area / np.pi), "square": np.sqrt(area) / (2 * SQUARE_HALF),
              "triangle": np.sqrt(area / _TRIANGLE_AREA)}
    # work in a crop holding the component and every template (all lie within 1.3 r_max of the centroid)
    reach = TRIANGLE_R * max(radius.values()) + 2.0
    y0, x0 = int(max(0, min(ys.min(), cy - reach))), int(max(0, min(xs.min(), cx - reach)))
    y1 = int(min(mask.shape[0], max(ys.max() + 1, np.ceil(cy + reach))))
    x1 = int(min(mask.shape[1], max(xs.max() + 1, np.ceil(cx + reach))))
    crop = mask[y0:y1, x0:x1]
    best, best_iou = SHAPES[0], -1.0
    for kind in SHAPES:
        template = shape_mask(kind, cx - x0, cy - y0, radius[kind], *crop.shape)
        iou = (template & crop).sum() / max((template | crop).sum(), 1)
        if iou > best_iou:
            best, best_iou = kind, iou
    return best


def analyse(frames) -> dict:
    """What the frames show: background, colour, shape, direction (clips) and position, plus centroids.

    `frames`: `(F, H, W, 3)` or `(H, W, 3)`, uint8 or float in [0, 1], numpy or torch, or PIL images.
    Values are names from the grammar, or None where nothing was found.
    """
    arr = to_uint8_frames(frames).astype(np.float64)
    n, h, w = arr.shape[:3]
    ring = np.ones((h, w), dtype=bool)
    ring[BORDER:h - BORDER, BORDER:w - BORDER] = False
    b0 = np.median(arr[:, ring].reshape(-1, 3), axis=0)
    fg = np.linalg.norm(arr - b0, axis=-1) > FG_THRESHOLD
    bg_pixels = arr[~fg]
    background = _nearest(np.median(bg_pixels, axis=0) if len(bg_pixels) else b0, BACKGROUNDS)
    shapes, centroids, pixels = [], [], []
    components = _largest_components(fg)
    for i in range(n):
        comp = components[i]
        if comp.sum() < MIN_AREA * h * w:
            centroids.append(None)
            continue
        ys, xs = np.nonzero(comp)
        centroids.append((xs.mean() + 0.5, ys.mean() + 0.5))
        shapes.append(_classify_shape(comp))
        pixels.append(arr[i][comp])
    found = {"background": background, "colour": None, "shape": None, "direction": None, "position": None,
             "centroids": centroids}
    if not shapes:
        return found
    found["colour"] = _nearest(np.median(np.concatenate(pixels), axis=0), COLOURS)
    found["shape"] = Counter(shapes).most_common(1)[0][0]
    t = np.asarray([i for i, c in enumerate(centroids) if c is not None], dtype=np.float64)
    pts = np.asarray([c for c in centroids if c is not None])
    mid = pts.mean(axis=0) / (w, h)
    anchors = {k: np.linalg.norm(mid - np.asarray(v)) for k, v in POSITIONS.items()}
    found["position"] = min(anchors, key=anchors.get)
    if len(t) >= 2:
        slope = np.polyfit(t, pts, 1)[0]
        dx, dy = slope * (n - 1)
        if max(abs(dx) / w, abs(dy) / h) >= MIN_TRAVEL:
            found["direction"] = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else \
                ("down" if dy > 0 else "up")
    return found


def adherence(frames, prompt: str) -> Adherence:
    """Fraction of the prompt's four attributes that the frames show (see the module docstring).

    Prompts of data-set v2 (they name object sizes) are scored by `metric_v2.adherence_v2`.
    """
    from .metric_v2 import adherence_v2, is_v2_prompt

    if is_v2_prompt(prompt):
        return adherence_v2(frames, prompt)
    want = parse_prompt(prompt)
    found = analyse(frames)
    keys = ("background", "colour", "shape", "direction" if want["kind"] == "video" else "position")
    expected = {k: want[k] for k in keys}
    got = {k: found[k] for k in keys}
    score = sum(got[k] == expected[k] for k in keys) / len(keys)
    return Adherence(score=float(score), expected=expected, found=got)


def mean_adherence(samples, prompts) -> float:
    """Average adherence of `samples[i]` to `prompts[i]`."""
    samples, prompts = list(samples), list(prompts)
    if len(samples) != len(prompts) or not samples:
        raise ValueError(f"need as many samples as prompts (>= 1), got {len(samples)} and {len(prompts)}")
    return float(np.mean([adherence(s, p).score for s, p in zip(samples, prompts)]))
