"""Checks a Ray cluster launcher YAML (`ray up FILE`) offline: Ray's own checks first, then lbdist's.

Ray's part is what `ray up` runs before it talks to a cloud: `prepare_config` (merges the provider's
defaults.yaml, the setup commands, node-type worker bounds; for `provider: local`, builds the one node
type from head_ip/worker_ips) and `validate_config` (ray-schema.json plus the head/min-worker rules). Both
only read files inside the Ray package. The provider bootstrap that follows in `ray up`
(`_bootstrap_config`: IAM roles, subnets, instance-type lookups through boto3 / the GCP API) is never
called, so nothing here needs credentials or a network.

lbdist's part: keys outside our tables are errors (Ray's schema leaves `provider` and `node_config`
open, so a typo there would be dropped); GPU counts whole; the head without GPUs; every node type
declares its GPUs; worker bounds min <= max; each Ray pin (docker image tag, `ray==` in commands) on the
installed Ray's major.minor; GPU workers with NVLink multicast off (shapes.NCCL_ENV).
"""
from __future__ import annotations

import copy
import io
import logging
import re
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

from .shapes import (GPU_RULE, NCCL_RULE, ListOf, MapOf, Problem, Problems, check_ray_pin, check_same_pins,
                     check_shape, child_list, child_map, env_from_text, image_ray_version, join, keys,
                     missing_nccl_env, whole_count)

# --- the keys lbdist's launcher files may use ------------------------------------------------------------

COMMANDS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
TOP = ("cluster_name", "max_workers", "upscaling_speed", "idle_timeout_minutes", "file_mounts",
       "cluster_synced_files", "file_mounts_sync_continuously", "rsync_exclude", "rsync_filter", "metadata",
       "no_restart") + COMMANDS
DOCKER = keys("image", "container_name", "pull_before_run", "run_options", "head_image", "head_run_options",
              "worker_image", "worker_run_options", "disable_automatic_runtime_detection",
              "disable_shm_size_detection", "use_podman")
AUTH = keys("ssh_user", "ssh_private_key", "ssh_public_key", "ssh_proxy_command")

AWS_NODE = keys(
    "InstanceType", "ImageId", "KeyName", "SubnetIds", "SecurityGroupIds", "TagSpecifications", "Placement",
    "CapacityReservationSpecification", "NetworkInterfaces", "UserData",
    BlockDeviceMappings=ListOf(keys("DeviceName", Ebs=keys("VolumeSize", "VolumeType", "DeleteOnTermination",
                                                           "Iops", "Throughput", "Encrypted"))),
    InstanceMarketOptions=keys("MarketType", SpotOptions=keys("MaxPrice", "SpotInstanceType",
                                                              "InstanceInterruptionBehavior")),
    IamInstanceProfile=keys("Arn", "Name"))
GCP_NODE = keys(
    "machineType", "labels", "tags", "networkInterfaces", "minCpuPlatform",
    disks=ListOf(keys("boot", "autoDelete", "type",
                      initializeParams=keys("diskSizeGb", "sourceImage", "diskType"))),
    guestAccelerators=ListOf(keys("acceleratorType", "acceleratorCount")),
    scheduling=keys("onHostMaintenance", "automaticRestart", "preemptible", "provisioningModel",
                    "instanceTerminationAction"),
    metadata=keys(items=ListOf(keys("key", "value"))),
    serviceAccounts=ListOf(keys("email", "scopes")))
PROVIDERS = {
    "aws": (keys("type", "region", "availability_zone", "cache_stopped_nodes", "use_internal_ips",
                 "security_group", "cloudwatch", required=("type", "region")), AWS_NODE),
    "gcp": (keys("type", "region", "availability_zone", "project_id", "cache_stopped_nodes", "use_internal_ips",
                 required=("type", "region", "availability_zone", "project_id")), GCP_NODE),
    # on-prem: Ray builds the single node type itself and refuses available_node_types
    "local": (keys("type", "head_ip", "worker_ips", "coordinator_address", required=("type",)), None),
}


def node_type_shape(node_config) -> Any:
    return keys("min_workers", "max_workers", "idle_timeout_s", "priority", "labels", "initialization_commands",
                "worker_setup_commands", required=("node_config", "resources"), node_config=node_config,
                resources=MapOf(None), docker=keys("worker_image", "worker_run_options", "pull_before_run"))


def launcher_shape(provider_type: str):
    provider, node_config = PROVIDERS[provider_type]
    nested = dict(provider=provider, auth=AUTH, docker=DOCKER)
    if provider_type == "local":
        return keys(*TOP, "min_workers", required=("cluster_name", "provider"), **nested)
    return keys(*TOP, "head_node_type", required=("cluster_name", "provider", "head_node_type",
                                                  "available_node_types", "max_workers"),
                available_node_types=MapOf(node_type_shape(node_config)), **nested)


# --- Ray's own checks -----------------------------------------------------------------------------------

def ray_checks(config: dict) -> tuple[dict | None, list[Problem]]:
    """Ray's `prepare_config` + `validate_config` on a copy; the prepared config, or None and the reason.

    Their console output (cli_logger warnings) is captured and only shown when they fail."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    captured = io.StringIO()
    util_log = logging.getLogger("ray.autoscaler._private.util")  # "setting max workers for ..." at INFO
    level = util_log.level
    try:
        util_log.setLevel(logging.WARNING)
        with redirect_stdout(captured), redirect_stderr(captured):
            prepared = prepare_config(copy.deepcopy(config))
            validate_config(prepared)
    except jsonschema.ValidationError as err:
        path = ""
        for part in err.absolute_path:
            path = join(path, part)
        return None, [Problem(path, f"Ray's launcher schema (ray-schema.json): {err.message}")]
    except Exception as err:  # noqa: BLE001 - whatever Ray raises, the config is what it rejected
        said = str(err).strip()
        if not said:  # cli_logger.abort prints its reason before raising
            lines = captured.getvalue().strip().splitlines()
            said = lines[-1] if lines else type(err).__name__
        return None, [Problem("", f"Ray's prepare_config/validate_config rejected it: {said}")]
    finally:
        util_log.setLevel(level)
    return prepared, []


# --- lbdist's checks ------------------------------------------------------------------------------------

def start_flag(commands: list, flag: str) -> str | None:
    """The value of `--flag=V` / `--flag V` in a list of shell commands, or None."""
    text = " ".join(c for c in commands if isinstance(c, str))
    m = re.search(rf"--{flag}(?:=|\s+)(\S+)", text)
    return m.group(1).strip("'\";") if m else None


def check_node_gpus(config: dict, out: Problems) -> None:
    """Node types: GPU declared and whole, the head at 0, at least one GPU worker type."""
    types = child_map(config, "available_node_types")
    head = config.get("head_node_type")
    gpu_types = invalid = 0
    for name, node in types.items():
        resources = child_map(node, "resources")
        path = join(join(join("available_node_types", name), "resources"), "GPU")
        if "GPU" not in resources:
            out.add(path, "missing: declare GPU explicitly (0 for the CPU head) so the autoscaler plans "
                          "with it instead of looking the instance type up")
            continue
        gpus = whole_count(resources["GPU"])
        if gpus is None:
            invalid += 1
            out.add(path, f"{resources['GPU']!r} is not allowed: {GPU_RULE}")
        elif name == head and gpus != 0:
            out.add(path, f"{gpus} on the head node type: the head must have GPU: 0 (it runs the drivers, "
                          f"the Serve controller and the autoscaler; GPU work goes to workers)")
        elif name != head and gpus >= 1:
            gpu_types += 1
    head_gpus = start_flag(child_list(config, "head_start_ray_commands"), "num-gpus")
    if head_gpus is not None and whole_count(head_gpus) != 0:
        out.add("head_start_ray_commands", f"--num-gpus={head_gpus}: the head must start with --num-gpus=0")
    if types and gpu_types == 0 and not invalid:
        out.add("available_node_types", "no worker node type declares GPU >= 1; lbdist needs GPU workers")


def check_local_gpus(config: dict, out: Problems) -> None:
    """On-prem: GPUs come from `ray start` flags; the head must say --num-gpus=0, workers a whole N >= 1."""
    head = start_flag(child_list(config, "head_start_ray_commands"), "num-gpus")
    if head is None or whole_count(head) != 0:
        said = "no --num-gpus" if head is None else f"--num-gpus={head}"
        out.add("head_start_ray_commands", f"{said}: on-prem the head must start with --num-gpus=0 "
                                           f"(Ray would otherwise count the head machine's own GPUs)")
    worker = start_flag(child_list(config, "worker_start_ray_commands"), "num-gpus")
    if worker is None:
        out.add("worker_start_ray_commands", "no --num-gpus=N: state each worker machine's GPUs (whole N >= 1)")
    elif not whole_count(worker):
        out.add("worker_start_ray_commands", f"--num-gpus={worker} is not allowed: {GPU_RULE}, and >= 1")


def check_local_bounds(config: dict, out: Problems) -> None:
    """On-prem: min_workers <= max_workers <= the number of worker_ips (Ray would silently cap them)."""
    lo, hi = config.get("min_workers"), config.get("max_workers")
    ips = child_map(config, "provider").get("worker_ips")
    if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
        out.add("min_workers", f"min_workers {lo} > max_workers {hi}: the autoscaling bounds need min <= max")
    for key, value in (("min_workers", lo), ("max_workers", hi)):
        if isinstance(value, int) and isinstance(ips, list) and value > len(ips):
            out.add(key, f"{value} > the {len(ips)} machines in provider.worker_ips (Ray would cap it)")


def check_bounds(config: dict, out: Problems) -> None:
    """min_workers <= max_workers for each node type (a missing max is the global max_workers)."""
    for name, node in child_map(config, "available_node_types").items():
        if not isinstance(node, dict):
            continue
        lo, hi = node.get("min_workers", 0), node.get("max_workers", config.get("max_workers"))
        if isinstance(lo, int) and isinstance(hi, int) and lo > hi:
            out.add(join(join("available_node_types", name), "min_workers"),
                    f"min_workers {lo} > max_workers {hi}: the autoscaling bounds need min <= max")


def ray_pins(config: dict) -> list[tuple[str, str | None, str]]:
    """(path, pinned version or None, what) for each docker image and each `ray==X` in the commands."""
    found = []
    docker = child_map(config, "docker")
    for key in ("image", "head_image", "worker_image"):
        if isinstance(docker.get(key), str):
            found.append((join("docker", key), image_ray_version(docker[key]), f"image {docker[key]!r}"))
    for name, node in child_map(config, "available_node_types").items():
        image = child_map(node, "docker").get("worker_image")
        if isinstance(image, str):
            path = join(join(join("available_node_types", name), "docker"), "worker_image")
            found.append((path, image_ray_version(image), f"image {image!r}"))
    for key in COMMANDS:
        for i, command in enumerate(child_list(config, key)):
            for m in re.finditer(r"\bray(?:\[[^\]]*\])?==([\w.]+)", str(command)):
                found.append((join(key, i), m.group(1), f"ray=={m.group(1)}"))
    return found


def check_versions(config: dict, expected: str, out: Problems) -> None:
    pins = ray_pins(config)
    if not pins:
        out.add("docker.image", f"no Ray release pinned: set docker.image to e.g. rayproject/ray:{expected}-"
                                f"py311-cu128 (or pip install ray=={expected} in setup_commands)")
    for path, version, what in pins:
        out.extend(check_ray_pin(version, what, path, expected))
    out.extend(check_same_pins([(p, v) for p, v, _ in pins if v]))


def worker_env(config: dict, node: dict | None) -> dict[str, str]:
    """Environment a GPU worker's Ray processes get: docker run options and the worker start commands."""
    docker = child_map(config, "docker")
    parts = child_list(docker, "run_options") + child_list(docker, "worker_run_options")
    parts += child_list(child_map(node, "docker"), "worker_run_options")
    parts += child_list(config, "worker_start_ray_commands")
    return env_from_text(" ".join(str(p) for p in parts))


def check_nccl_env(config: dict, out: Problems) -> None:
    types = child_map(config, "available_node_types")
    targets = [(join("available_node_types", n), t) for n, t in types.items()
               if n != config.get("head_node_type") and whole_count(child_map(t, "resources").get("GPU"))]
    if not types:
        targets = [("worker_start_ray_commands", None)]
    for path, node in targets:
        missing = missing_nccl_env(worker_env(config, node))
        if missing:
            out.add(path, f"missing {' '.join(missing)} ({NCCL_RULE}; set them in docker.worker_run_options "
                          f"as --env NAME=VALUE or in worker_start_ray_commands)")


def check_launcher(config: dict, expected_ray: str) -> list[Problem]:
    """Every problem of one launcher config (a parsed YAML mapping)."""
    out = Problems()
    ptype = child_map(config, "provider").get("type")
    if not isinstance(ptype, str) or ptype not in PROVIDERS:
        out.add("provider.type", f"{ptype!r} is not a provider lbdist ships tables for; allowed: "
                                 f"{', '.join(PROVIDERS)}")
        return out.items
    out.extend(check_shape(config, launcher_shape(ptype), ""))
    prepared, ray_problems = ray_checks(config)
    out.extend(ray_problems)
    if ptype == "local":
        check_local_gpus(config, out)
        check_local_bounds(config, out)
    else:
        check_node_gpus(config, out)
    check_bounds(prepared if prepared is not None else config, out)
    check_versions(config, expected_ray, out)
    check_nccl_env(config, out)
    return out.items
