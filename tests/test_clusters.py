"""clusters/: every launcher YAML, KubeRay manifest and Serve config validates offline; broken copies are
rejected with the key named; `lbdist validate-cluster` exit codes. No network, no Ray cluster started."""
from __future__ import annotations

import argparse
import copy
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import yaml

from lbdist.clusters import detect_kind, validate_file
from lbdist.clusters.shapes import image_ray_version, whole_count

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted(ROOT.glob("clusters/**/*.yaml"))
EXPECTED = {"aws-h100.yaml", "gcp-h100.yaml", "local.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
            "kuberay/rayservice.yaml", "serve/video.yaml", "serve/image.yaml"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT / "clusters").as_posix()


def test_the_shipped_files_are_all_there():
    assert EXPECTED <= {rel(p) for p in CLUSTER_FILES}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=rel)
def test_every_cluster_file_validates(path):
    assert validate_file(path) == []


# --- broken copies ----------------------------------------------------------------------------------------

def at(doc: dict, dotted: str):
    """The container holding the last key of `dotted` (`a.b.0.c` -> doc['a']['b'][0]), and that key."""
    parts = [int(p) if p.isdigit() else p for p in dotted.split("/")]
    node = doc
    for part in parts[:-1]:
        node = node[part]
    return node, parts[-1]


def rename(dotted: str, new: str) -> Callable[[dict], None]:
    def edit(doc):
        node, key = at(doc, dotted)
        node[new] = node.pop(key)
    return edit


def setval(dotted: str, value) -> Callable[[dict], None]:
    def edit(doc):
        node, key = at(doc, dotted)
        node[key] = value
    return edit


def sub(dotted: str, old: str, new: str) -> Callable[[dict], None]:
    def edit(doc):
        node, key = at(doc, dotted)
        assert old in node[key]
        node[key] = node[key].replace(old, new)
    return edit


def in_serve_config(edit: Callable[[dict], None]) -> Callable[[dict], None]:
    """Apply `edit` to the Serve config held as a YAML string in a RayService's serveConfigV2."""
    def wrapped(doc):
        serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
        edit(serve)
        doc["spec"]["serveConfigV2"] = yaml.safe_dump(serve, sort_keys=False)
    return wrapped


GPU_LIMIT = "template/spec/containers/0/resources/limits/nvidia.com~gpu"
HEAD_GPU = "headGroupSpec.template.spec.containers[0].resources.limits[\"nvidia.com/gpu\"]"
WORKER_GPU = "workerGroupSpecs[0].template.spec.containers[0].resources.limits[\"nvidia.com/gpu\"]"


def cluster_cases(file: str, spec: str, prefix: str) -> list:
    """The RayCluster-spec cases, for a spec found at `spec` (slash path) and reported at `prefix`."""
    s = spec + "/"
    return [
        (file, "typo", rename(s + "workerGroupSpecs/0/maxReplicas", "maxReplica"),
         prefix + "workerGroupSpecs[0].maxReplica", "did you mean 'maxReplicas'"),
        (file, "typo", rename(s + "workerGroupSpecs/0/template/spec/containers/0/env/0/value", "valeu"),
         prefix + "workerGroupSpecs[0].template.spec.containers[0].env[0].valeu", "unknown key"),
        (file, "fractional GPU", setval(s + "workerGroupSpecs/0/" + GPU_LIMIT, "0.5"), prefix + WORKER_GPU,
         "whole numbers"),
        (file, "head with GPUs", setval(s + "headGroupSpec/" + GPU_LIMIT, 1), prefix + HEAD_GPU,
         "head pod must not hold GPUs"),
        (file, "head with GPUs", setval(s + "headGroupSpec/rayStartParams/num-gpus", "1"),
         prefix + "headGroupSpec.rayStartParams.num-gpus", 'num-gpus: "0"'),
        (file, "wrong Ray version", setval(s + "rayVersion", "2.59.0"), prefix + "rayVersion", "2.59.0"),
        (file, "wrong Ray version", setval(s + "headGroupSpec/template/spec/containers/0/image",
                                           "rayproject/ray:latest-gpu"),
         prefix + "headGroupSpec.template.spec.containers[0].image", "does not pin a Ray release"),
        (file, "bounds", setval(s + "workerGroupSpecs/0/minReplicas", 9), prefix + "workerGroupSpecs[0].minReplicas",
         "min <= max"),
        (file, "autoscaling off", setval(s + "enableInTreeAutoscaling", False), prefix + "enableInTreeAutoscaling",
         "set enableInTreeAutoscaling: true"),
        (file, "NCCL env", lambda d: at(d, s + "workerGroupSpecs/0/template/spec/containers/0/env")[0]
         ["env"].pop(0), prefix + "workerGroupSpecs[0].template.spec.containers[0].env", "NCCL_NVLS_ENABLE=0"),
        (file, "rayStartParams type", setval(s + "headGroupSpec/rayStartParams/num-gpus", 0),
         prefix + "headGroupSpec.rayStartParams.num-gpus", "values are strings"),
    ]


def cloud_cases(file: str) -> list:
    gpu = "available_node_types/gpu_h100x8/"
    return [
        (file, "typo", rename(gpu + "max_workers", "max_worker"), "available_node_types.gpu_h100x8.max_worker",
         "did you mean 'max_workers'"),
        (file, "typo", rename("provider/region", "regoin"), "provider.regoin", "did you mean 'region'"),
        (file, "typo", rename("idle_timeout_minutes", "idle_timeout_minute"), "idle_timeout_minute",
         "unknown key"),
        (file, "fractional GPU", setval(gpu + "resources/GPU", 0.5), "available_node_types.gpu_h100x8.resources.GPU",
         "whole numbers"),
        (file, "fractional GPU", setval(gpu + "resources/GPU", 8.0), "available_node_types.gpu_h100x8.resources.GPU",
         "whole numbers"),
        (file, "head with GPUs", setval("available_node_types/head_cpu/resources/GPU", 8),
         "available_node_types.head_cpu.resources.GPU", "the head must have GPU: 0"),
        (file, "head GPUs undeclared", lambda d: d["available_node_types"]["head_cpu"]["resources"].pop("GPU"),
         "available_node_types.head_cpu.resources.GPU", "declare GPU explicitly"),
        (file, "wrong Ray version", setval("docker/image", "rayproject/ray:2.59.1-py311-cu128"), "docker.image",
         "share major.minor"),
        (file, "wrong Ray version", sub("setup_commands/0", "==2.60.0", "==2.61.0"), "setup_commands[0]",
         "pins Ray 2.61.0"),
        (file, "bounds", setval(gpu + "min_workers", 5), "available_node_types.gpu_h100x8.min_workers",
         "min <= max"),
        (file, "NCCL env", lambda d: d["docker"]["worker_run_options"].pop(0), "available_node_types.gpu_h100x8",
         "NCCL_NVLS_ENABLE=0"),
    ]


def serve_cases(file: str, prefix: str = "", wrap=lambda e: e) -> list:
    app = "applications/0/"
    p = prefix + "applications[0]."
    return [
        (file, "typo", wrap(rename(app + "deployments/1/max_ongoing_requests", "max_ongoing_request")),
         p + "deployments[1].max_ongoing_request", "did you mean 'max_ongoing_requests'"),
        (file, "typo", wrap(rename(app + "deployments/1/autoscaling_config/max_replicas", "max_replica")),
         p + "deployments[1].autoscaling_config.max_replica", "did you mean 'max_replicas'"),
        (file, "typo", wrap(rename(app + "args/sp_degree", "sp_degre")), p + "args.sp_degre",
         "did you mean 'sp_degree'"),
        (file, "typo", wrap(rename("http_options/port", "prot")), prefix + "http_options.prot", "unknown key"),
        (file, "fractional GPU", wrap(setval(app + "deployments/1/ray_actor_options/num_gpus", 0.5)),
         p + "deployments[1].ray_actor_options.num_gpus", "whole numbers"),
        (file, "fractional GPU", wrap(setval(app + "args/sp_degree", 1.5)), p + "args.sp_degree", "valid integer, got a number with a fractional part"),
        (file, "ingress with GPUs", wrap(setval(app + "deployments/0/ray_actor_options/num_gpus", 1)),
         p + "deployments[0].ray_actor_options.num_gpus", "the ingress holds no GPU"),
        (file, "unknown deployment", wrap(setval(app + "deployments/1/name", "Generator")),
         p + "deployments[1].name", "allowed: VideoIngress, GeneratorDeployment"),
        (file, "bad schedule", wrap(setval(app + "args/schedule", "every 6")), p + "args.schedule",
         "'N', 'periodic:N"),
        (file, "Ray schema", wrap(setval(app + "deployments/1/max_ongoing_requests", "one")),
         p + "deployments[1].max_ongoing_requests", "ServeDeploySchema"),
    ]


CASES = (
    cloud_cases("aws-h100.yaml") + cloud_cases("gcp-h100.yaml") + [
        ("aws-h100.yaml", "typo", rename("available_node_types/gpu_h100x8/node_config/BlockDeviceMappings/0/Ebs/"
                                         "VolumeSize", "VolumeSise"),
         "available_node_types.gpu_h100x8.node_config.BlockDeviceMappings[0].Ebs.VolumeSise", "VolumeSize"),
        ("gcp-h100.yaml", "typo", rename("available_node_types/gpu_h100x8/node_config/scheduling/onHostMaintenance",
                                         "onHostMaintenence"),
         "available_node_types.gpu_h100x8.node_config.scheduling.onHostMaintenence", "onHostMaintenance"),
        ("local.yaml", "typo", rename("provider/worker_ips", "worker_ip"), "provider.worker_ip",
         "did you mean 'worker_ips'"),
        ("local.yaml", "typo", rename("docker/worker_run_options", "worker_run_option"), "docker.worker_run_option",
         "unknown key"),
        ("local.yaml", "fractional GPU", sub("worker_start_ray_commands/1", "--num-gpus=8", "--num-gpus=0.5"),
         "worker_start_ray_commands", "whole numbers"),
        ("local.yaml", "head with GPUs", sub("head_start_ray_commands/1", "--num-gpus=0", "--num-gpus=8"),
         "head_start_ray_commands", "--num-gpus=0"),
        ("local.yaml", "wrong Ray version", setval("docker/image", "rayproject/ray:2.59.0-py311-cu128"),
         "docker.image", "share major.minor"),
        ("local.yaml", "bounds", setval("min_workers", 3), "min_workers", "min <= max"),
        ("local.yaml", "node types", setval("available_node_types", {"gpu": {"resources": {}, "node_config": {}}}),
         "available_node_types", "unknown key"),
    ]
    + cluster_cases("kuberay/raycluster.yaml", "spec", "spec.")
    + cluster_cases("kuberay/rayjob.yaml", "spec/rayClusterSpec", "spec.rayClusterSpec.")
    + cluster_cases("kuberay/rayservice.yaml", "spec/rayClusterConfig", "spec.rayClusterConfig.")
    + [
        ("kuberay/raycluster.yaml", "typo", rename("spec/enableInTreeAutoscaling", "enableInTreeAutoScaling"),
         "spec.enableInTreeAutoScaling", "did you mean 'enableInTreeAutoscaling'"),
        ("kuberay/raycluster.yaml", "apiVersion", setval("apiVersion", "ray.io/v1alpha1"), "apiVersion",
         "ray.io/v1"),
        ("kuberay/rayjob.yaml", "typo", rename("spec/shutdownAfterJobFinishes", "shutdownAfterJobFinished"),
         "spec.shutdownAfterJobFinished", "did you mean 'shutdownAfterJobFinishes'"),
        ("kuberay/rayjob.yaml", "bad value", setval("spec/submissionMode", "K8sMode"), "spec.submissionMode",
         "allowed: K8sJobMode"),
        ("kuberay/rayjob.yaml", "ttl without shutdown", setval("spec/shutdownAfterJobFinishes", False),
         "spec.ttlSecondsAfterFinished", "needs shutdownAfterJobFinishes: true"),
        ("kuberay/rayjob.yaml", "bad value", setval("spec/activeDeadlineSeconds", 0), "spec.activeDeadlineSeconds",
         ">= 1"),
        ("kuberay/rayjob.yaml", "typo", sub("spec/runtimeEnvYAML", "env_vars:", "env_var:"),
         "spec.runtimeEnvYAML.env_var", "did you mean 'env_vars'"),
        ("kuberay/rayjob.yaml", "missing", lambda d: d["spec"].pop("entrypoint"), "spec.entrypoint", "missing"),
    ]
    + serve_cases("serve/video.yaml") + serve_cases("serve/image.yaml")
    + serve_cases("kuberay/rayservice.yaml", "spec.serveConfigV2.", in_serve_config)
)


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("file,what,edit,key,says", CASES,
                         ids=[f"{c[0]}:{c[1]}:{c[3]}" for c in CASES])
def test_a_broken_copy_is_rejected_with_the_key_named(tmp_path, file, what, edit, key, says):
    doc = _tilde(copy.deepcopy(_load(ROOT / "clusters" / file)))  # slash paths spell nvidia.com/gpu with ~
    edit(doc)
    broken = tmp_path / Path(file).name
    broken.write_text(yaml.safe_dump(_untilde(doc), sort_keys=False))
    problems = validate_file(broken)
    named = [p for p in problems if p.startswith(f"{broken}: {key}: ")]
    assert named, f"no problem names {key!r}:\n" + "\n".join(problems)
    assert any(says in p for p in named), f"{says!r} not said about {key}:\n" + "\n".join(named)


def _tilde(doc):
    """Let slash paths reach `nvidia.com/gpu`: rename it to `nvidia.com~gpu` while the edit runs."""
    if isinstance(doc, dict):
        for k in list(doc):
            doc[k.replace("/", "~") if isinstance(k, str) else k] = _tilde(doc.pop(k))
    elif isinstance(doc, list):
        doc[:] = [_tilde(v) for v in doc]
    return doc


def _untilde(doc):
    if isinstance(doc, dict):
        return {(k.replace("~", "/") if isinstance(k, str) else k): _untilde(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_untilde(v) for v in doc]
    return doc


# --- the command line -------------------------------------------------------------------------------------

def _command_module():
    """lbdist/cli/validate_cluster.py: imported normally once lbdist/cli/ is a package, else by its path."""
    try:
        from lbdist.cli import validate_cluster
        return validate_cluster
    except ImportError:
        path = ROOT / "lbdist" / "cli" / "validate_cluster.py"
        spec = importlib.util.spec_from_file_location("lbdist_cli_validate_cluster", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def lbdist(*argv: str) -> int:
    """What `lbdist` does with the subcommand: register(subparsers), run(args); ValueError -> one line, 2."""
    parser = argparse.ArgumentParser(prog="lbdist")
    _command_module().register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    try:
        return args.func(args)
    except ValueError as err:
        print(f"lbdist {args.command}: error: {err}", file=sys.stderr)
        return 2


def test_cli_prints_ok_for_each_valid_file(capsys):
    files = [str(p) for p in CLUSTER_FILES]
    assert lbdist("validate-cluster", *files) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"ok {f}" for f in files]


def test_cli_exits_2_and_names_the_key(tmp_path, capsys):
    doc = _load(ROOT / "clusters" / "aws-h100.yaml")
    doc["available_node_types"]["gpu_h100x8"]["resources"]["GPU"] = 0.5
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc))
    good = str(ROOT / "clusters" / "serve" / "video.yaml")
    assert lbdist("validate-cluster", good, str(broken)) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"ok {good}"]
    err = captured.err.splitlines()
    assert f"{broken}: available_node_types.gpu_h100x8.resources.GPU: 0.5 is not allowed: GPU counts must be " \
           f"whole numbers >= 0 (a GPU is not shared between lbdist workers)" in err
    assert re.fullmatch(rf"lbdist validate-cluster: error: \d+ problem\(s\) in 1 of 2 file\(s\): {broken}", err[-1])


@pytest.mark.parametrize("content,says", [
    (None, "cannot read it"),
    ("cluster_name: [unclosed", "not valid YAML"),
    ("", "the file is empty"),
    ("just: a mapping\n", "cannot tell what this is"),
    ("- a list\n", "cannot tell what this is"),
    ("cluster_name: x\nprovider: {type: azure}\n", "'azure' is not a provider"),
])
def test_cli_exits_2_for_files_that_are_no_cluster_config(tmp_path, capsys, content, says):
    path = tmp_path / "config.yaml"
    if content is not None:
        path.write_text(content)
    assert lbdist("validate-cluster", str(path)) == 2
    assert says in capsys.readouterr().err


def test_cli_ray_version_option(capsys):
    aws = str(ROOT / "clusters" / "aws-h100.yaml")
    assert lbdist("validate-cluster", "--ray-version", "2.59.0", aws) == 2
    assert "but lbdist runs with Ray 2.59.0" in capsys.readouterr().err
    assert lbdist("validate-cluster", "--ray-version", "latest", aws) == 2
    assert "give a Ray release as X.Y or X.Y.Z" in capsys.readouterr().err


# --- the files agree with each other; the module stays light --------------------------------------------

def test_rayservice_embeds_the_video_app():
    serve = _load(ROOT / "clusters" / "serve" / "video.yaml")
    embedded = yaml.safe_load(_load(ROOT / "clusters" / "kuberay" / "rayservice.yaml")["spec"]["serveConfigV2"])
    for app in embedded["applications"]:
        assert app.pop("runtime_env")["pip"] == ["lbdist[serve,sp]"]
    assert embedded == serve


def test_kuberay_cluster_specs_agree():
    """rayjob.yaml and rayservice.yaml carry raycluster.yaml's cluster, with one GPU pod kept."""
    base = _load(ROOT / "clusters" / "kuberay" / "raycluster.yaml")["spec"]
    for file, key in (("rayjob.yaml", "rayClusterSpec"), ("rayservice.yaml", "rayClusterConfig")):
        spec = copy.deepcopy(_load(ROOT / "clusters" / "kuberay" / file)["spec"][key])
        group = spec["workerGroupSpecs"][0]
        assert (group.pop("replicas"), group.pop("minReplicas")) == (1, 1)
        expected = copy.deepcopy(base)
        for k in ("replicas", "minReplicas"):
            expected["workerGroupSpecs"][0].pop(k)
        assert spec == expected, file


KEY_LINE = re.compile(r"^\s*(?:-\s+)?[\"']?[\w./-]+[\"']?\s*:(\s|$)")


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=rel)
def test_every_key_has_a_comment(path):
    """Each `key:` line follows a comment line or carries one (the files are read by people deploying)."""
    bare, prev = [], ""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if KEY_LINE.match(line) and not prev.lstrip().startswith("#") and "#" not in line.split(":", 1)[1]:
            bare.append(f"{n}: {line.strip()}")
        prev = line if line.strip() else prev
    assert not bare, f"keys without a comment in {rel(path)}:\n" + "\n".join(bare)


def test_kind_detection():
    assert detect_kind({"cluster_name": "x", "provider": {}}) == "launcher"
    assert detect_kind({"apiVersion": "ray.io/v1", "kind": "RayJob"}) == "kuberay"
    assert detect_kind({"applications": []}) == "serve"
    assert detect_kind({"other": 1}) is None and detect_kind([1]) is None


def test_several_kuberay_documents_in_one_file(tmp_path):
    kuberay = ROOT / "clusters" / "kuberay"
    both = tmp_path / "both.yaml"
    both.write_text((kuberay / "raycluster.yaml").read_text() + "\n---\n" + (kuberay / "rayjob.yaml").read_text())
    assert validate_file(both) == []
    doc = _load(kuberay / "rayjob.yaml")
    doc["spec"]["backoffLimit"] = -1
    both.write_text((kuberay / "raycluster.yaml").read_text() + "\n---\n" + yaml.safe_dump(doc))
    assert validate_file(both) == [f"{both}: [doc 1] spec.backoffLimit: -1 is not allowed: a whole number >= 0"]


def test_value_helpers():
    assert [whole_count(v) for v in (8, "8", 0, 0.5, 8.0, "500m", -1, True, None)] == \
        [8, 8, 0, None, None, None, None, None, None]
    assert image_ray_version("rayproject/ray:2.60.0-py311-cu128") == "2.60.0"
    assert image_ray_version("registry:5000/ray:2.60.1") == "2.60.1"
    assert image_ray_version("rayproject/ray") is None and image_ray_version("rayproject/ray:nightly") is None


def test_importing_the_validator_starts_nothing_heavy():
    code = ("import sys, lbdist.clusters, lbdist.clusters.launcher, lbdist.clusters.kuberay, "
            "lbdist.clusters.serve_config; print(sorted(m for m in ('ray', 'ray.serve', 'jsonschema') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _paths(node, prefix=(), depth=2):
    yield prefix
    if depth and isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,), depth - 1)
    elif depth and isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,), depth - 1)


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=rel)
def test_malformed_values_are_reported_not_raised(path):
    """Any node replaced by a value of the wrong type: the validators report, they never crash."""
    from lbdist.clusters import validate_documents

    doc = _load(path)
    for where in list(_paths(doc))[1:]:
        for value in (None, 7, [1]):
            broken = copy.deepcopy(doc)
            node = broken
            for part in where[:-1]:
                node = node[part]
            node[where[-1]] = value
            validate_documents([broken])  # no exception
