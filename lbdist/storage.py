"""The storage seam: every path lbdist reads or writes (pairs, adapter sets, outputs, job records) goes through here.

Paths are local paths or fsspec URIs: `file://`, `memory://` (tests), and `s3://`, `gs://`, `abfs://`, ... when the
user installs the driver (`pip install s3fs` / `gcsfs`). Writes are atomic: readers see the old object or the whole
new one, never a torn one (a local file is written to a temporary name in the same directory and renamed; on an
object store one `put` is atomic per object). Files are created with the user's umask.
"""
from __future__ import annotations

import os
import posixpath
import tempfile
from pathlib import Path
from typing import Callable

SCHEME_SEP = "://"


def is_uri(path: str | os.PathLike) -> bool:
    return SCHEME_SEP in str(path)


def is_local(path: str | os.PathLike) -> bool:
    return not is_uri(path) or str(path).startswith("file://")


def local_path(path: str | os.PathLike) -> Path:
    """A local path (`file://` stripped); ValueError for a remote URI."""
    text = str(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if is_uri(text):
        raise ValueError(f"{text!r} is a remote URI, not a local path")
    return Path(text).expanduser()


def filesystem(path: str | os.PathLike):
    """(fsspec filesystem, path inside it) for a URI; a missing driver names the package to install."""
    import fsspec

    try:
        fs, inner = fsspec.core.url_to_fs(str(path))
    except ImportError as exc:
        scheme = str(path).split(SCHEME_SEP, 1)[0]
        raise ValueError(f"no fsspec driver for {scheme}:// ({exc}); install it, e.g. pip install s3fs (s3) or gcsfs (gs)") from exc
    except ValueError as exc:
        raise ValueError(f"unsupported storage URI {str(path)!r}: {exc}") from exc
    return fs, inner


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts; URIs keep their scheme and use '/'."""
    if is_uri(base):
        return posixpath.join(str(base), *parts)
    return str(Path(base).joinpath(*parts))


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


def write_local_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, then rename the result onto `path` (same directory, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file the mode the user's umask asks for
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write `data` to a local path or URI atomically; returns the path written."""
    if is_local(path):
        return str(write_local_atomic(local_path(path), lambda tmp: Path(tmp).write_bytes(data)))
    fs, inner = filesystem(path)
    parent = posixpath.dirname(inner)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(inner, data)
    return str(path)


def write_text(path: str | os.PathLike, text: str) -> str:
    return write_bytes(path, text.encode())


def write_file(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> str:
    """Write through a local temporary file (`write(tmp_path)` makes it), then place it at `path` atomically."""
    if is_local(path):
        return str(write_local_atomic(local_path(path), write))
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "out" + (suffix or Path(str(path)).suffix))
        write(target)
        return write_bytes(path, Path(target).read_bytes())


def read_bytes(path: str | os.PathLike) -> bytes:
    if is_local(path):
        return local_path(path).read_bytes()
    fs, inner = filesystem(path)
    return fs.cat_file(inner)


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode()


def exists(path: str | os.PathLike) -> bool:
    if is_local(path):
        return local_path(path).exists()
    fs, inner = filesystem(path)
    return fs.exists(inner)


def isdir(path: str | os.PathLike) -> bool:
    if is_local(path):
        return local_path(path).is_dir()
    fs, inner = filesystem(path)
    return fs.isdir(inner)


def makedirs(path: str | os.PathLike) -> None:
    if is_local(path):
        local_path(path).mkdir(parents=True, exist_ok=True)
    else:
        fs, inner = filesystem(path)
        fs.makedirs(inner, exist_ok=True)


def listdir(path: str | os.PathLike) -> list[str]:
    """Names (not paths) of the entries of a directory; [] if it does not exist."""
    if is_local(path):
        p = local_path(path)
        return sorted(e.name for e in p.iterdir()) if p.is_dir() else []
    fs, inner = filesystem(path)
    if not fs.exists(inner):
        return []
    return sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(inner, detail=False))


def remove(path: str | os.PathLike) -> None:
    if is_local(path):
        p = local_path(path)
        if p.exists():
            p.unlink()
    else:
        fs, inner = filesystem(path)
        if fs.exists(inner):
            fs.rm_file(inner)


def _usable_ancestor(path: str | os.PathLike, what: str) -> tuple[Path, Path]:
    """(the local path, its nearest existing ancestor); ValueError naming the path if the OS cannot use it."""
    try:
        p = local_path(path)
        parent = p.parent
        while not parent.exists():
            parent = parent.parent
        return p, parent
    except (OSError, ValueError) as err:
        raise ValueError(f"{what} {str(path)!r:.200}: not a usable path ({err})") from None


def check_writable(path: str | os.PathLike, what: str = "output") -> None:
    """Raise ValueError (naming the path) unless a file can be created at `path`; checked before long work starts."""
    if not is_local(path):
        filesystem(path)  # the driver exists
        return
    p, parent = _usable_ancestor(path, what)
    if p.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a directory; give a file name")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r}: cannot write to {str(parent)!r} (not a writable directory)")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{what} {str(path)!r} exists and is not writable")


def check_writable_dir(path: str | os.PathLike, what: str = "output directory") -> None:
    """Raise ValueError (naming the path) unless `path` is, or can be created as, a writable directory."""
    if not is_local(path):
        filesystem(path)  # the driver exists
        return
    p, parent = _usable_ancestor(path, what)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file; give a directory (it is created if missing)")
    target = p if p.is_dir() else parent
    if not target.is_dir() or not os.access(target, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(path)!r}: cannot write to {str(target)!r} (not a writable directory)")


def fetch_dir(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """A local directory with the contents of a local path or remote directory URI (copied once to `cache`)."""
    if is_local(path):
        return local_path(path)
    import hashlib

    fs, inner = filesystem(path)
    root = Path(cache or Path(tempfile.gettempdir()) / "lbdist-cache")
    target = root / hashlib.sha256(str(path).encode()).hexdigest()[:16]
    if not target.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=root.mkdir(parents=True, exist_ok=True) or root))
        fs.get(inner.rstrip("/") + "/", str(tmp), recursive=True)
        os.replace(tmp, target)
    return target
