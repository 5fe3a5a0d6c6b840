"""Writing results without losing them: atomic file writes, videos (mp4, gif) and images (png)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only on such systems)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename the result onto `path`.

    The temporary file sits in the target directory, so the rename is atomic: readers see the old file or
    the whole new one, and a crash leaves no torn file behind. The file gets the mode a plain `open()` would
    give it (0666 less the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp made it 0600; give it the mode open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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


def save_video(frames, path: str | os.PathLike, fps: int = 8) -> Path:
    """Write frames to `.mp4` (H.264 via imageio-ffmpeg) or `.gif`, atomically."""
    import imageio.v3 as iio

    path = Path(path)
    arr = to_uint8_frames(frames)
    suffix = path.suffix.lower()
    if suffix == ".mp4":
        # yuv420p needs even sizes; pad by edge replication rather than resampling
        h, w = arr.shape[1:3]
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        return atomic_write(path, lambda tmp: iio.imwrite(tmp, arr, extension=".mp4", fps=fps, codec="libx264",
                                                          macro_block_size=1))
    if suffix == ".gif":
        return atomic_write(path, lambda tmp: iio.imwrite(tmp, arr, extension=".gif", duration=1000 / fps, loop=0))
    raise ValueError(f"cannot write video to {path.name!r}: use a .mp4 or .gif file name")


def save_image(image, path: str | os.PathLike) -> Path:
    """Write one image (PIL, or float array/tensor in [0, 1]) to `.png`, atomically."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"cannot write an image to {path.name!r}: use a .png file name")
    if not hasattr(image, "save"):
        image = Image.fromarray(to_uint8_frames(image)[0])
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
