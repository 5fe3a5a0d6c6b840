"""Checks a Ray Serve config file (`serve deploy FILE`, a RayService's serveConfigV2) offline and strictly.

Ray's part: the file must parse as `ray.serve.schema.ServeDeploySchema`, exactly as `serve deploy` parses
it. That schema ignores keys it does not know, so the allowed keys are then derived from the same pydantic
models (ServeDeploySchema -> HTTPOptionsSchema, ServeApplicationSchema -> DeploymentSchema ->
RayActorOptionsSchema, AutoscalingConfig, ...) and every other key is an error; runtime_env keys must be
among Ray's `RuntimeEnv.known_fields`.

lbdist's part, for applications built by lbdist's Serve app (APP_IMPORT_PATH): `args` holds only the
keys and values of the app's own settings model (lbdist.serve.settings.ServeSettings); deployments are named from DEPLOYMENT_NAMES; the generator takes one
request at a time and whole GPUs; the ingress holds no GPU. The app's names live here, in one place.
"""
from __future__ import annotations

import difflib
import functools
import typing
from typing import Any

from .shapes import (GPU_RULE, ListOf, MapOf, Problem, Problems, check_shape, child_list, child_map, join, keys,
                     whole_count)

# --- the contract with lbdist's Serve app (lbdist/serve); change the names here ---------------------------

APP_IMPORT_PATH = "lbdist.serve.app:build_app"
INGRESS_DEPLOYMENT = "VideoIngress"
GENERATOR_DEPLOYMENT = "GeneratorDeployment"
DEPLOYMENT_NAMES = (INGRESS_DEPLOYMENT, GENERATOR_DEPLOYMENT)


# --- keys derived from Ray's own models ------------------------------------------------------------------

def _model_fields(model: type) -> dict[str, Any]:
    """name -> annotation for a pydantic v2 (or v1) model, with aliases as names."""
    fields = getattr(model, "model_fields", None)
    if fields is not None:
        return {(f.alias or name): f.annotation for name, f in fields.items()}
    return {(f.alias or name): f.outer_type_ for name, f in model.__fields__.items()}


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and (hasattr(tp, "model_fields") or hasattr(tp, "__fields__"))


def _shape_of(tp: Any, runtime_env: Any) -> Any:
    """The shape of a value annotated `tp`: a model's keys, a list of them, or free."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_model(tp):
        return model_shape(tp)
    if origin in (list, typing.List):
        inner = _shape_of(args[0], runtime_env) if args else None
        return ListOf(inner) if inner is not None else None
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        models = [a for a in args if _is_model(a)]  # Union[Dict, AutoscalingConfig]: the model's keys
        return model_shape(models[0]) if models else None
    return None


@functools.lru_cache(maxsize=None)
def model_shape(model: type) -> Any:
    runtime_env = runtime_env_shape()
    nested = {}
    for name, tp in _model_fields(model).items():
        nested[name] = runtime_env if name == "runtime_env" else _shape_of(tp, runtime_env)
    return keys(**nested)


@functools.lru_cache(maxsize=None)
def runtime_env_shape() -> Any:
    from ray.runtime_env import RuntimeEnv

    public = sorted(k for k in RuntimeEnv.known_fields if not k.startswith("_"))
    return keys(*public, env_vars=MapOf(None))


def check_runtime_env(env: dict, path: str) -> list[Problem]:
    return check_shape(env, runtime_env_shape(), path)


def schema_problems(config: dict) -> list[Problem]:
    """ServeDeploySchema's own verdict, one problem per pydantic error."""
    from ..serve.app import deploy_schema

    ServeDeploySchema = deploy_schema()

    try:
        ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate") \
            else ServeDeploySchema.parse_obj(config)
    except Exception as err:  # noqa: BLE001 - pydantic's ValidationError, or a validator's ValueError
        errors = getattr(err, "errors", None)
        if not callable(errors):
            return [Problem("", f"Ray Serve's ServeDeploySchema rejected it: {err}")]
        out = []
        for e in errors():
            path = ""
            for part in e.get("loc", ()):
                path = join(path, part)
            got = repr(e.get("input", "?"))
            got = got if len(got) <= 80 else got[:77] + "..."
            out.append(Problem(path, f"Ray Serve's ServeDeploySchema: {e.get('msg')} (got {got})"))
        return out
    return []


# --- lbdist's app ---------------------------------------------------------------------------------------

def check_args(args: Any, path: str, out: Problems) -> int:
    """The app's args, checked by the app's own settings model (`lbdist.serve.settings.ServeSettings`: unknown keys
    and bad values are errors naming the key); returns sp_degree (1 when absent or invalid)."""
    from pydantic import ValidationError

    from ..serve.settings import ServeSettings, _message

    if not isinstance(args, dict):
        out.add(path, f"expected a mapping with keys {', '.join(ServeSettings.model_fields)}")
        return 1
    try:
        settings = ServeSettings(**args)
    except ValidationError as exc:
        for error in exc.errors():
            where = path
            for part in error["loc"]:
                where = join(where, part)
            value = args.get(error["loc"][0]) if error["loc"] else args
            hint = ""
            if error["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(error["loc"][-1]), list(ServeSettings.model_fields), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.add(where, f"{value!r} is not allowed: {_message(error)}{hint}")
        degree = args.get("sp_degree", 1)
        return degree if isinstance(degree, int) and not isinstance(degree, bool) and degree >= 1 else 1
    return settings.sp_degree


def check_deployment(dep: dict, path: str, sp_degree: int, out: Problems) -> None:
    name = dep.get("name")
    if name not in DEPLOYMENT_NAMES:
        out.add(join(path, "name"), f"{name!r} is not a deployment of {APP_IMPORT_PATH}; allowed: "
                                    f"{', '.join(DEPLOYMENT_NAMES)}")
        return
    gpus = child_map(dep, "ray_actor_options").get("num_gpus")
    gpath = join(join(path, "ray_actor_options"), "num_gpus")
    if gpus is not None and whole_count(gpus) is None:
        out.add(gpath, f"{gpus!r} is not allowed: {GPU_RULE}")
    elif name == INGRESS_DEPLOYMENT and gpus:
        out.add(gpath, f"{gpus!r}: the ingress holds no GPU (0 or omit it); GPUs go to {GENERATOR_DEPLOYMENT}")
    if name == INGRESS_DEPLOYMENT:
        return
    if dep.get("max_ongoing_requests", 1) != 1:
        out.add(join(path, "max_ongoing_requests"),
                f"{dep['max_ongoing_requests']!r}: a generator replica runs one generation at a time; use 1")
    bundles = dep.get("placement_group_bundles")
    if isinstance(bundles, list):
        counts = [b.get("GPU", 0) for b in bundles if isinstance(b, dict)]
        bad = [c for c in counts if whole_count(c) is None]
        if bad:
            out.add(join(path, "placement_group_bundles"), f"GPU {bad[0]!r} is not allowed: {GPU_RULE}")
        elif sum(counts) != sp_degree:
            out.add(join(path, "placement_group_bundles"),
                    f"reserve {sum(counts)} GPUs but args.sp_degree is {sp_degree}: a replica holds sp_degree GPUs")


def check_serve(config: dict, expected_ray: str = "") -> list[Problem]:
    """Every problem of one Serve config (a parsed YAML mapping with `applications`).
    `expected_ray` is unused: a Serve config pins no Ray release (kept for the common signature)."""
    from ..serve.app import deploy_schema

    ServeDeploySchema = deploy_schema()

    out = Problems()
    out.extend(check_shape(config, model_shape(ServeDeploySchema), ""))
    out.extend(schema_problems(config))
    for i, app in enumerate(child_list(config, "applications")):
        if not isinstance(app, dict) or app.get("import_path") != APP_IMPORT_PATH:
            continue
        apath = join("applications", i)
        degree = check_args(app.get("args"), join(apath, "args"), out)
        for j, dep in enumerate(child_list(app, "deployments")):
            if isinstance(dep, dict):
                check_deployment(dep, join(join(apath, "deployments"), j), degree, out)
    return out.items
