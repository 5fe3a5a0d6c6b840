"""`validate_file(path)`: every problem of one cluster config in `clusters/`, found offline.

Three kinds of file, told apart by their keys:

- a Ray cluster launcher YAML (`ray up`): `provider` and `cluster_name` -> launcher.py
- a KubeRay manifest (`kubectl apply`): `apiVersion` and `kind` -> kuberay.py (one or more documents)
- a Ray Serve config (`serve deploy`): `applications` -> serve_config.py

Each problem reads `FILE: KEY.PATH: what is wrong and what is allowed`. An empty list means valid.

    >>> validate_file("clusters/aws-h100.yaml")
    []
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from .shapes import Problem, installed_ray_version

KIND_HINT = ("a Ray cluster launcher config (keys cluster_name, provider), a KubeRay manifest (keys "
             "apiVersion, kind) or a Serve config (key applications)")


def detect_kind(doc: Any) -> str | None:
    """'launcher', 'kuberay', 'serve', or None when the document is none of them."""
    if not isinstance(doc, dict):
        return None
    if "apiVersion" in doc or "kind" in doc:
        return "kuberay"
    if "applications" in doc:
        return "serve"
    if "provider" in doc or "cluster_name" in doc:
        return "launcher"
    return None


def checker(kind: str) -> Callable[[dict, str], list[Problem]]:
    if kind == "launcher":
        from .launcher import check_launcher
        return check_launcher
    if kind == "kuberay":
        from .kuberay import check_manifest
        return check_manifest
    from .serve_config import check_serve
    return check_serve


def validate_documents(docs: list[Any], expected_ray: str | None = None) -> list[Problem]:
    """Problems of parsed YAML documents (a file's documents, in order), numbered when there are several."""
    expected = expected_ray or installed_ray_version()
    docs = [d for d in docs if d is not None]
    if not docs:
        return [Problem("", f"the file is empty; expected {KIND_HINT}")]
    problems = []
    for n, doc in enumerate(docs):
        number = n if len(docs) > 1 else None
        kind = detect_kind(doc)
        if kind is None:
            found = sorted(map(str, doc))[:8] if isinstance(doc, dict) else type(doc).__name__
            problems.append(Problem("", f"cannot tell what this is (found {found}); expected {KIND_HINT}", number))
        elif kind != "kuberay" and len(docs) > 1:
            problems.append(Problem("", f"a {kind} config must be the only document of its file", number))
        else:
            problems += [Problem(p.path, p.message, number) for p in checker(kind)(doc, expected)]
    return problems


def format_problem(source: str, problem: Problem) -> str:
    doc = f"[doc {problem.document}] " if problem.document is not None else ""
    return f"{source}: {doc}{problem.path or '<document>'}: {problem.message}"


def validate_file(path: str | Path, expected_ray: str | None = None) -> list[str]:
    """Every problem of one file as `FILE: KEY.PATH: message` lines; [] when it is valid.

    `expected_ray` is the Ray release the pins must match (major.minor); default: the installed Ray."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as err:
        return [f"{source}: cannot read it: {err.strerror or err}"]
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as err:
        return [f"{source}: not valid YAML: {err}".replace("\n", " ")]
    return [format_problem(source, p) for p in validate_documents(docs, expected_ray)]


def validate_files(paths: list[str | Path], expected_ray: str | None = None) -> dict[str, list[str]]:
    """validate_file for each path: path -> its problems (empty when valid)."""
    return {str(p): validate_file(p, expected_ray) for p in paths}


def require_valid(path: str | Path, expected_ray: str | None = None) -> None:
    """Raise ValueError listing every problem of `path` (one per line); return when it is valid."""
    problems = validate_file(path, expected_ray)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {path}:\n" + "\n".join(problems))
