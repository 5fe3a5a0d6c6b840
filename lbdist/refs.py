"""One rule for what a model or adapter-set reference names: a local path, an fsspec URI, a Hub id or a built-in.

`resolve_ref(text, kind)` decides without any network access, in this order:

1. `toy:<family>` / `tiny:<family>`: a built-in model (kind "model" only).
2. `file://...`: a local path; any other `scheme://...` (s3, gs, memory, hf, ...): an fsspec URI.
3. Text starting with `.`, `/`, `~`, `\\`, or a drive letter (`C:\\`, `C:/`): a local path; it must exist.
4. Any text that exists on the local file system: a local path.
5. `owner/name` (exactly one slash, Hub characters only: letters, digits, `-`, `_`, `.`; no `--` or `..`):
   - if `owner` is an existing local directory (say `adapters/missing` where `adapters/` exists), it is
     read as a local path that is missing: "no such directory", never a Hub lookup;
   - otherwise it is a Hub id. It is fetched only when online; offline (`HF_HUB_OFFLINE=1`) only from
     the local Hub cache. Any failure is one line naming the reference, and says that it is also not a
     local path (both readings).
6. Anything else that contains a slash is a missing local path; a bare word that is none of the above is
   refused with the forms that are allowed.

Every refusal is a `ValueError` naming the reference and what is allowed; no other exception escapes
`resolve_ref`. `ensure_available` checks, still without downloading, that a Hub reference can be had
(offline: it must be in the cache); `fetch_hub` downloads a Hub snapshot under `hub_errors`, which turns
the Hub client's exceptions into that one line.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

KINDS = ("adapters", "model")
# The file that proves a Hub snapshot in the local cache is the thing asked for.
PROBE_FILE = {"adapters": "lbdist_adapters.json", "model": "model_index.json"}
BUILTIN_PREFIXES = ("toy:", "tiny:")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._\-]*[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"^{_HUB_PART}/{_HUB_PART}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ALLOWED = ("a local path (./dir, /abs/dir, ~/dir, or an existing relative path), an fsspec URI (s3://..., "
           "gs://..., file://..., memory://...), a Hub id owner/name")


@dataclass(frozen=True)
class Ref:
    """A resolved reference.

    kind: 'local' (value: absolute path), 'uri' (value: the fsspec URI), 'hub' (value: `owner/name`) or
        'builtin' (value: `toy:<family>` / `tiny:<family>`).
    value: what to open, as above.
    text: the reference as the user wrote it (for messages).
    of: what it should name: 'adapters' (an adapter set) or 'model' (a diffusers pipeline).
    """

    kind: str
    value: str
    text: str
    of: str = "adapters"

    def describe(self) -> str:
        return f"{self.of} {self.text!r}"


def hub_offline() -> bool:
    """True when the Hub client is told to stay offline (`HF_HUB_OFFLINE`, read now, not at import)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        try:
            from huggingface_hub import constants
        except ImportError:
            return False
        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _exists(path: str) -> bool:
    try:
        return os.path.exists(path)
    except (OSError, ValueError):  # names the OS cannot represent do not exist
        return False


def _is_dir(path: str) -> bool:
    try:
        return os.path.isdir(path)
    except (OSError, ValueError):
        return False


def is_hub_id(text: str) -> bool:
    """`owner/name` with Hub characters (the Hub's own rules: no `--`, no `..`, no `.git` ending, <= 96)."""
    return (len(text) <= 96 and bool(_HUB_ID.match(text)) and "--" not in text and ".." not in text
            and not text.endswith(".git"))


def _hint(text: str) -> str:
    return " (note the leading or trailing whitespace)" if text != text.strip() else ""


def _local(text: str, path: str, of: str) -> Ref:
    expanded = os.path.expanduser(path)
    if not _exists(expanded):
        raise ValueError(f"{of} {text!r}: no such file or directory{_hint(text)}")
    return Ref("local", os.path.abspath(expanded), text, of)


def _builtin(text: str, of: str) -> Ref:
    if of != "model":
        raise ValueError(f"{of} {text!r}: toy:/tiny: name built-in models, not adapter sets; give {ALLOWED}")
    prefix, family = text.split(":", 1)
    if prefix == "toy":
        from .toy.build import FAMILIES  # the families with a bundled toy
    else:
        from .models import families

        FAMILIES = families()  # every registered family has a test-size ("tiny") config
    if family not in FAMILIES:
        raise ValueError(f"model {text!r}: unknown family {family!r}; use {prefix}:<family> with family one of "
                         f"{', '.join(FAMILIES)}")
    return Ref("builtin", text, text, of)


def resolve_ref(text, kind: str = "adapters") -> Ref:
    """Classify a model or adapter-set reference (see the module docstring); no network access.

    Raises ValueError naming the reference and the allowed forms when it is none of them, or when it can
    only be a local path and that path does not exist.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if isinstance(text, os.PathLike):
        text = os.fspath(text)
        if not isinstance(text, str):
            raise ValueError(f"{kind} reference must be a str path, got {type(text).__name__}")
        return _local(text, text, kind)
    if not isinstance(text, str):
        raise ValueError(f"{kind} reference must be a string, got {type(text).__name__}: give {ALLOWED}")
    if not text.strip():
        raise ValueError(f"{kind} reference is empty: give {ALLOWED}")
    if _CONTROL.search(text):
        raise ValueError(f"{kind} reference {text!r} contains a control character")
    if text.startswith(BUILTIN_PREFIXES):
        return _builtin(text, kind)
    scheme = _URI.match(text)
    if scheme:
        if scheme.group(1).lower() == "file":
            return _local(text, unquote(text[len(scheme.group(0)):]), kind)
        return Ref("uri", text, text, kind)
    if text.startswith((".", "/", "~", "\\")) or _DRIVE.match(text):
        return _local(text, text, kind)
    if _exists(text):
        return Ref("local", os.path.abspath(text), text, kind)
    return _not_a_local_path(text, kind)


def _not_a_local_path(text: str, kind: str) -> Ref:
    if is_hub_id(text):
        owner = text.split("/", 1)[0]
        if _is_dir(owner):
            raise ValueError(f"{kind} {text!r}: no such directory (read as a local path because the directory "
                             f"{owner!r} exists here; a Hub id of the same form would be shadowed by it)")
        return Ref("hub", text, text, kind)
    if "/" in text or os.sep in text:
        raise ValueError(f"{kind} {text!r}: no such file or directory (and not a Hub id, which is owner/name)"
                         + _hint(text))
    raise ValueError(f"{kind} {text!r} is not an existing local path; give {ALLOWED}"
                     + (", or toy:<family> / tiny:<family>" if kind == "model" else "") + _hint(text))


def _in_cache(repo_id: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # a malformed cache is as good as no cache here
        return False
    return isinstance(found, str)


def ensure_available(ref: Ref) -> None:
    """Refuse now, without downloading, what cannot be had: a missing local path, or a Hub id offline that
    is not in the local Hub cache. (Online Hub ids and URIs are only known at fetch time.)"""
    if ref.kind == "local" and not _exists(ref.value):
        raise ValueError(f"{ref.describe()}: no such file or directory ({ref.value})")
    if ref.kind == "hub" and hub_offline() and not _in_cache(ref.value, PROBE_FILE[ref.of]):
        raise ValueError(f"{ref.describe()}: not a local path, and as a Hub id it is not in the local Hub cache "
                         "while HF_HUB_OFFLINE=1 (unset it to download, or give a local directory)")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


@contextlib.contextmanager
def hub_errors(ref: Ref):
    """Turn any failure of the Hub client inside the block into one ValueError line naming `ref`."""
    from huggingface_hub import errors

    prefix = f"{ref.describe()}: not a local path, and as a Hub id"
    try:
        yield
    except errors.GatedRepoError as e:
        raise ValueError(f"{prefix} it is gated: accept its terms and log in (hf auth login)") from e
    except errors.RepositoryNotFoundError as e:
        raise ValueError(f"{prefix} no such repository on the Hub (or it is private: log in with "
                         "hf auth login)") from e
    except errors.RevisionNotFoundError as e:
        raise ValueError(f"{prefix} its revision was not found ({_first_line(e)})") from e
    except errors.OfflineModeIsEnabled as e:
        raise ValueError(f"{prefix} it cannot be fetched: HF_HUB_OFFLINE=1 and it is not in the local "
                         "Hub cache") from e
    except errors.LocalEntryNotFoundError as e:
        raise ValueError(f"{prefix} it could not be fetched: the Hub was unreachable (network?) and it is "
                         "not in the local Hub cache") from e
    except Exception as e:  # network stacks raise many types (httpx, OSError, ...): one line for all
        raise ValueError(f"{prefix} fetching it failed ({_first_line(e)})") from e


def fetch_hub(ref: Ref, allow_patterns: list[str] | None = None) -> Path:
    """Download (or, offline, find in the cache) a Hub snapshot; returns its local directory."""
    if ref.kind != "hub":
        raise ValueError(f"{ref.describe()} is a {ref.kind} reference, not a Hub id")
    ensure_available(ref)
    from huggingface_hub import snapshot_download

    with hub_errors(ref):
        return Path(snapshot_download(ref.value, allow_patterns=allow_patterns, local_files_only=hub_offline()))
