"""Strict key tables for the cluster config validators: which keys a mapping may hold, checked recursively.

Ray's launcher schema, the KubeRay CRDs and Ray Serve's schema all accept some keys they do not know (free
provider sections, `x-kubernetes-preserve-unknown-fields`, pydantic models that ignore extras), so a typo
there is silently dropped. Each validator describes the parts of a file that lbdist's configs use as a
small tree of shapes and `check_shape` reports every key outside it, with the allowed keys and the closest
match. Also here: the value checks several validators share (whole GPU counts, Ray version pins).

    >>> shape = Keys({"min_workers": None, "max_workers": None})
    >>> [p.message for p in check_shape({"max_worker": 2}, shape, "available_node_types.gpu")][0]
    "unknown key 'max_worker' (did you mean 'max_workers'?); allowed: max_workers, min_workers"
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Union


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file: where (a key path such as `available_node_types.gpu.resources.GPU`,
    empty for the whole document) and what, including what is allowed."""

    path: str
    message: str
    document: int | None = None  # which YAML document of a multi-document file, counted from 0


@dataclass(frozen=True)
class Keys:
    """A mapping whose keys must come from `allowed` (key -> shape of its value; None: any value, not
    descended) and must include `required`."""

    allowed: Mapping[str, "Shape"]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListOf:
    """A list whose items all have shape `item`."""

    item: "Shape"


@dataclass(frozen=True)
class MapOf:
    """A mapping with free keys (node type names, label keys) whose values all have shape `value`."""

    value: "Shape"


Shape = Union[Keys, ListOf, MapOf, None]
FREE: Shape = None  # any value, not descended (provider-specific blocks we do not use, probes, ...)


@dataclass
class Problems:
    """Collects problems while a validator walks one document."""

    items: list[Problem] = field(default_factory=list)

    def add(self, path: str, message: str) -> None:
        self.items.append(Problem(path, message))

    def extend(self, problems: list[Problem]) -> None:
        self.items.extend(problems)


def join(path: str, key: Any) -> str:
    """`a.b` for plain keys, `a[0]` for list indices, `a["nvidia.com/gpu"]` for keys holding dots."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    text = str(key)
    if re.fullmatch(r"[A-Za-z0-9_\-]+", text):
        return f"{path}.{text}" if path else text
    return f'{path}["{text}"]'


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def unknown_key_message(key: Any, allowed: Mapping[str, Any]) -> str:
    names = sorted(allowed)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown key '{key}'{hint}; allowed: {', '.join(names)}"


def check_shape(value: Any, shape: Shape, path: str) -> list[Problem]:
    """Every key of `value` outside `shape`, every missing required key, every mapping/list mismatch."""
    if shape is None:
        return []
    if isinstance(shape, ListOf):
        if not isinstance(value, list):
            return [Problem(path, f"expected a list, got {type_name(value)} {value!r}")]
        return [p for i, item in enumerate(value) for p in check_shape(item, shape.item, join(path, i))]
    if not isinstance(value, dict):
        return [Problem(path, f"expected a mapping, got {type_name(value)} {value!r}")]
    if isinstance(shape, MapOf):
        return [p for k, v in value.items() for p in check_shape(v, shape.value, join(path, k))]
    problems = [Problem(join(path, k), unknown_key_message(k, shape.allowed)) for k in value
                if k not in shape.allowed]
    problems += [Problem(join(path, k), "missing required key") for k in shape.required if k not in value]
    for k, v in value.items():
        if k in shape.allowed:
            problems += check_shape(v, shape.allowed[k], join(path, k))
    return problems


def keys(*names: str, required: tuple[str, ...] = (), **nested: Shape) -> Keys:
    """Shorthand: `keys("a", "b", c=ListOf(...))` allows a and b (any value) and c (with its shape)."""
    return Keys({**{n: None for n in names}, **nested}, required)


# --- values shared by the validators --------------------------------------------------------------------

def child_map(parent: Any, key: Any) -> dict:
    """parent[key] when both are mappings, else {}: checks read malformed files without failing (the shape
    check reports the wrong type)."""
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else {}


def child_list(parent: Any, key: Any) -> list:
    """parent[key] when parent is a mapping and the value a list, else []."""
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, list) else []


def whole_count(value: Any) -> int | None:
    """A GPU count as an int when it is a whole number >= 0 (an int, or a digit string as Kubernetes
    quantities and `ray start` flags write it); None for 0.5, 8.0, "500m", -1, True."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        return int(value)
    return None


GPU_RULE = "GPU counts must be whole numbers >= 0 (a GPU is not shared between lbdist workers)"

VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def installed_ray_version() -> str:
    """The Ray release this package runs with (`ray.__version__`, read from the installed metadata so
    Ray itself is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError as err:
        raise ValueError("validating cluster configs needs Ray: pip install 'lbdist[serve]'") from err


def image_ray_version(image: str) -> str | None:
    """`2.60.0` from `rayproject/ray:2.60.0-py311-cu128` (the tag must begin with the Ray release)."""
    name = image.split("@", 1)[0]
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
    m = VERSION_RE.match(tag)
    return ".".join(m.groups()) if m else None


def check_ray_pin(pin: str | None, what: str, path: str, expected: str) -> list[Problem]:
    """A pinned Ray release `pin` (from an image tag, rayVersion or `ray==`) matches the installed Ray's
    major.minor `expected`; `what` says where it came from for the message."""
    want = ".".join(expected.split(".")[:2])
    if pin is None:
        return [Problem(path, f"{what} does not pin a Ray release; pin one matching the installed Ray "
                              f"{expected}, e.g. rayproject/ray:{expected}-py311-cu128")]
    m = VERSION_RE.fullmatch(pin)
    if not m:
        return [Problem(path, f"{what} pins Ray {pin!r}, not a release X.Y.Z; use {expected}")]
    if f"{m.group(1)}.{m.group(2)}" != want:
        return [Problem(path, f"{what} pins Ray {pin}, but lbdist runs with Ray {expected}: the cluster "
                              f"and the client must share major.minor {want}")]
    return []


def check_same_pins(pins: list[tuple[str, str]]) -> list[Problem]:
    """Every Ray pin of one file (path, version) names the same release."""
    versions = sorted({v for _, v in pins})
    if len(versions) <= 1:
        return []
    listing = ", ".join(f"{p}={v}" for p, v in pins)
    return [Problem(pins[0][0], f"the file pins different Ray releases ({listing}); use one")]


NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
NCCL_RULE = ("GPU workers keep NVLink multicast off: " + " ".join(f"{k}={v}" for k, v in NCCL_ENV.items()))


def missing_nccl_env(env: Mapping[str, str]) -> list[str]:
    """The NCCL_ENV variables that `env` lacks or sets to another value, as `NAME=VALUE` wanted."""
    return [f"{k}={v}" for k, v in NCCL_ENV.items() if str(env.get(k)) != v]


def env_from_text(text: str) -> dict[str, str]:
    """`NAME=VALUE` assignments found in shell commands or docker options (`--env NAME=VALUE`, `-e ...`,
    `export NAME=VALUE`)."""
    pattern = r"\b([A-Z][A-Z0-9_]*)=(['\"]?)([^\s;'\"]*)\2"
    return {m.group(1): m.group(3) for m in re.finditer(pattern, text)}
