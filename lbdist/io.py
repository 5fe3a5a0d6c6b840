"""Writing results without losing them: videos (mp4, gif) and images (png), atomically, to paths or URIs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from .storage import write_file


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename the result onto `path` (see `lbdist.storage.write_local_atomic`)."""
    from .storage import write_local_atomic

    return write_local_atomic(path, write)


def to_uint8_frames(frames) -> np.ndarray:
    """Frames as uint8 `(F, H, W, 3)` from a float array/tensor in [0, 1] (`(F,H,W,C)` or `(F,C,H,W)`) or PIL images."""
    if isinstance(frames, list) and frames and hasattr(frames[0], "convert"):
        return np.stack([np.asarray(f.convert("RGB")) for f in frames])
    arr = frames.detach().float().cpu().numpy() if hasattr(frames, "detach") else np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def _check_fps(fps) -> None:
    if type(fps) is not int or not 1 <= fps <= 120:
        raise ValueError(f"fps must be an integer in 1..120, got {fps!r}")


def save_video(frames, path: str | os.PathLike, fps: int = 8) -> str:
    """Write frames to `.mp4` (H.264 via imageio-ffmpeg) or `.gif` at a path or URI, atomically."""
    import imageio.v3 as iio

    _check_fps(fps)
    suffix = Path(str(path)).suffix.lower()
    arr = to_uint8_frames(frames)
    if suffix == ".mp4":
        # yuv420p needs even sizes; pad by edge replication rather than resampling
        h, w = arr.shape[1:3]
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        return write_file(path, lambda tmp: iio.imwrite(tmp, arr, extension=".mp4", fps=fps, codec="libx264",
                                                        macro_block_size=1))
    if suffix == ".gif":
        return write_file(path, lambda tmp: iio.imwrite(tmp, arr, extension=".gif", duration=1000 / fps, loop=0))
    raise ValueError(f"cannot write video to {Path(str(path)).name!r}: use a .mp4 or .gif file name")


def save_image(image, path: str | os.PathLike) -> str:
    """Write one image (PIL, or float array/tensor in [0, 1]) to `.png` at a path or URI, atomically."""
    from PIL import Image

    if Path(str(path)).suffix.lower() != ".png":
        raise ValueError(f"cannot write an image to {Path(str(path)).name!r}: use a .png file name")
    if not hasattr(image, "save"):
        image = Image.fromarray(to_uint8_frames(image)[0])
    return write_file(path, lambda tmp: image.save(tmp, format="PNG"))


def save_output(frames, path: str | os.PathLike, fps: int = 16) -> str:
    """Frames `(F, H, W, 3)` to the format the path's suffix names (.mp4, .gif: video; .png: the first frame)."""
    suffix = Path(str(path)).suffix.lower()
    if suffix == ".png":
        return save_image(to_uint8_frames(frames)[0], path)
    return save_video(frames, path, fps=fps)
