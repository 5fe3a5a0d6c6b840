"""Checks KubeRay manifests (RayCluster, RayJob, RayService; apiVersion ray.io/v1) offline.

`kubectl apply` checks a manifest against the CRD only on a live cluster, and the CRDs leave parts open,
so this module keeps tables of the CRD fields lbdist's manifests use, taken from KubeRay's
`ray-operator/config/crd/bases/ray.io_{rayclusters,rayjobs,rayservices}.yaml` (v1.7): the spec fields of
each kind, the head and worker group specs, the autoscaler options, and the parts of the Kubernetes pod
template we write (containers, env, resources, volumes). Blocks we pass through (probes, affinity,
security contexts) are not descended.

Beyond the keys: required fields; whole `nvidia.com/gpu` limits; a head without GPUs (`num-gpus: "0"`
in rayStartParams and no GPU limit); worker bounds; autoscaling on where the bounds differ; each Ray pin
(rayVersion, the Ray container's image tag) on the installed Ray's major.minor; RayJob rules the operator
enforces at run time; a RayService's serveConfigV2 checked as a Serve config (serve_config.py).
"""
from __future__ import annotations

from typing import Any

import yaml

from .shapes import (GPU_RULE, NCCL_RULE, ListOf, MapOf, Problem, Problems, check_ray_pin, check_same_pins,
                     check_shape, child_list, child_map, image_ray_version, join, keys, missing_nccl_env,
                     whole_count)

API_VERSION = "ray.io/v1"
GPU_RESOURCE = "nvidia.com/gpu"
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")

# --- CRD fields (KubeRay v1.7) and the pod template parts lbdist writes -----------------------------------

RESOURCES = keys("claims", limits=MapOf(None), requests=MapOf(None))
ENV_VAR = keys("name", "value", "valueFrom", required=("name",))
CONTAINER = keys(
    "args", "command", "envFrom", "image", "imagePullPolicy", "lifecycle", "livenessProbe", "name",
    "readinessProbe", "resizePolicy", "restartPolicy", "restartPolicyRules", "securityContext", "startupProbe",
    "stdin", "stdinOnce", "terminationMessagePath", "terminationMessagePolicy", "tty", "volumeDevices",
    "workingDir", required=("name",), env=ListOf(ENV_VAR), resources=RESOURCES,
    ports=ListOf(keys("containerPort", "hostIP", "hostPort", "name", "protocol")),
    volumeMounts=ListOf(keys("mountPath", "mountPropagation", "name", "readOnly", "recursiveReadOnly",
                             "subPath", "subPathExpr")))
VOLUME = keys(
    "awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "configMap", "csi", "downwardAPI",
    "ephemeral", "fc", "flexVolume", "flocker", "gcePersistentDisk", "gitRepo", "glusterfs", "hostPath",
    "image", "iscsi", "name", "nfs", "persistentVolumeClaim", "photonPersistentDisk", "portworxVolume",
    "projected", "quobyte", "rbd", "scaleIO", "secret", "storageos", "vsphereVolume", required=("name",),
    emptyDir=keys("medium", "sizeLimit"))
POD_SPEC = keys(
    "activeDeadlineSeconds", "affinity", "automountServiceAccountToken", "dnsConfig", "dnsPolicy",
    "enableServiceLinks", "ephemeralContainers", "hostAliases", "hostIPC", "hostNetwork", "hostPID",
    "hostUsers", "hostname", "hostnameOverride", "imagePullSecrets", "nodeName", "os", "overhead",
    "preemptionPolicy", "priority", "priorityClassName", "readinessGates", "resourceClaims", "resources",
    "restartPolicy", "runtimeClassName", "schedulerName", "schedulingGates", "schedulingGroup",
    "securityContext", "serviceAccount", "serviceAccountName", "setHostnameAsFQDN", "shareProcessNamespace",
    "subdomain", "terminationGracePeriodSeconds", "topologySpreadConstraints", required=("containers",),
    containers=ListOf(CONTAINER), initContainers=ListOf(CONTAINER), volumes=ListOf(VOLUME),
    nodeSelector=MapOf(None),
    tolerations=ListOf(keys("effect", "key", "operator", "tolerationSeconds", "value")))
POD_TEMPLATE = keys(metadata=keys("annotations", "finalizers", "labels", "name", "namespace"), spec=POD_SPEC)
HEAD_GROUP = keys("enableIngress", "headService", "ingressOptions", "serviceType", required=("template",),
                  rayStartParams=MapOf(None), resources=MapOf(None), labels=MapOf(None), template=POD_TEMPLATE)
WORKER_GROUP = keys("groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "priority",
                    "numOfHosts", "scaleStrategy", "suspend",
                    required=("groupName", "minReplicas", "maxReplicas", "template"),
                    rayStartParams=MapOf(None), resources=MapOf(None), labels=MapOf(None), template=POD_TEMPLATE)
AUTOSCALER = keys("image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds", "upscalingMode",
                  "version", "envFrom", "volumeMounts", "command", "args", resources=RESOURCES,
                  env=ListOf(ENV_VAR))
CLUSTER_SPEC = keys(
    "upgradeStrategy", "authOptions", "suspend", "managedBy", "headServiceAnnotations",
    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "historyServerOptions", "networkPolicy",
    "tlsOptions", "rayVersion", required=("headGroupSpec",), autoscalerOptions=AUTOSCALER,
    headGroupSpec=HEAD_GROUP, workerGroupSpecs=ListOf(WORKER_GROUP))
JOB_SPEC = keys(
    "activeDeadlineSeconds", "backoffLimit", "deletionStrategy", "entrypoint", "entrypointNumCpus",
    "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "preRunningDeadlineSeconds",
    "runtimeEnvYAML", "shutdownAfterJobFinishes", "submissionMode", "suspend", "ttlSecondsAfterFinished",
    rayClusterSpec=CLUSTER_SPEC, submitterConfig=keys("backoffLimit"), submitterPodTemplate=POD_TEMPLATE,
    metadata=MapOf(None), clusterSelector=MapOf(None))
SERVICE_SPEC = keys(
    "deploymentUnhealthySecondThreshold", "excludeHeadPodFromServeSvc", "managedBy",
    "rayClusterDeletionDelaySeconds", "serveConfigV2", "serveService", "serviceUnhealthySecondThreshold",
    "suspend", "upgradeStrategy", required=("rayClusterConfig", "serveConfigV2"), rayClusterConfig=CLUSTER_SPEC)
KINDS = {"RayCluster": CLUSTER_SPEC, "RayJob": JOB_SPEC, "RayService": SERVICE_SPEC}


def document_shape(spec_shape) -> Any:
    return keys("apiVersion", "kind", required=("apiVersion", "kind", "metadata", "spec"),
                metadata=keys("name", "namespace", "labels", "annotations", "generateName", required=("name",)),
                spec=spec_shape)


# --- cluster spec checks --------------------------------------------------------------------------------

def containers(group: Any) -> list:
    """The containers of a head/worker group's pod template."""
    return child_list(child_map(child_map(group, "template"), "spec"), "containers")


def ray_container(group: Any) -> dict:
    """KubeRay treats the first container of a pod template as the Ray container."""
    found = containers(group)
    return found[0] if found and isinstance(found[0], dict) else {}


def container_gpus(container: dict, path: str, out: Problems) -> int | None:
    """The container's whole `nvidia.com/gpu` limit (0 when absent), reporting fractions and
    requests that differ from the limit."""
    res = child_map(container, "resources")
    limits, requests = child_map(res, "limits"), child_map(res, "requests")
    value = limits.get(GPU_RESOURCE, 0)
    gpus = whole_count(value)
    where = join(join(join(path, "resources"), "limits"), GPU_RESOURCE)
    if gpus is None:
        out.add(where, f"{value!r} is not allowed: {GPU_RULE}")
    if GPU_RESOURCE in requests and whole_count(requests[GPU_RESOURCE]) != gpus:
        out.add(join(join(join(path, "resources"), "requests"), GPU_RESOURCE),
                f"{requests[GPU_RESOURCE]!r} differs from the limit {value!r}: Kubernetes needs extended "
                f"resources requested and limited alike (or only limited)")
    return gpus


def check_start_params(group: dict, path: str, out: Problems) -> dict:
    params = child_map(group, "rayStartParams")
    for key, value in params.items():
        if not isinstance(value, str):
            out.add(join(join(path, "rayStartParams"), key),
                    f"{value!r} is {type(value).__name__}; rayStartParams values are strings (quote it: \"{value}\")")
    return params


def check_head(head: dict, path: str, out: Problems) -> None:
    params = check_start_params(head, path, out)
    if str(params.get("num-gpus")) != "0":
        out.add(join(join(path, "rayStartParams"), "num-gpus"),
                f"{params.get('num-gpus')!r}: the head must set num-gpus: \"0\" (Ray would otherwise count "
                f"GPUs visible in the head container)")
    for i, container in enumerate(containers(head)):
        cpath = join(join(join(join(path, "template"), "spec"), "containers"), i)
        if isinstance(container, dict) and container_gpus(container, cpath, out):
            out.add(join(join(join(cpath, "resources"), "limits"), GPU_RESOURCE),
                    "the head pod must not hold GPUs: GPU work goes to worker groups")
    gpu = child_map(head, "resources").get("GPU")
    if gpu is not None and whole_count(gpu) != 0:
        out.add(join(join(path, "resources"), "GPU"), f"{gpu!r}: the head declares no GPUs (\"0\" or omit it)")


def check_worker(group: dict, path: str, out: Problems) -> int | None:
    """One worker group; returns its GPUs per pod (0 when none, None when invalid)."""
    params = check_start_params(group, path, out)
    lo, hi, replicas = group.get("minReplicas"), group.get("maxReplicas"), group.get("replicas")
    for key, value in (("minReplicas", lo), ("maxReplicas", hi), ("replicas", replicas)):
        if value is not None and (whole_count(value) is None or isinstance(value, str)):
            out.add(join(path, key), f"{value!r} is not allowed: a whole number >= 0")
    if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool) and lo > hi:
        out.add(join(path, "minReplicas"), f"minReplicas {lo} > maxReplicas {hi}: need min <= max")
    elif isinstance(replicas, int) and isinstance(lo, int) and isinstance(hi, int) and not lo <= replicas <= hi:
        out.add(join(path, "replicas"), f"replicas {replicas} is outside minReplicas..maxReplicas {lo}..{hi}")
    cpath = join(join(join(join(path, "template"), "spec"), "containers"), 0)
    container = ray_container(group)
    gpus = container_gpus(container, cpath, out)
    if gpus is not None and "num-gpus" in params and whole_count(params["num-gpus"]) != gpus:
        out.add(join(join(path, "rayStartParams"), "num-gpus"),
                f"{params['num-gpus']!r} differs from the container's {GPU_RESOURCE} limit {gpus}")
    if gpus:
        env = {str(e.get("name")): e.get("value") for e in child_list(container, "env") if isinstance(e, dict)}
        missing = missing_nccl_env(env)
        if missing:
            out.add(join(cpath, "env"), f"missing {' '.join(missing)} ({NCCL_RULE})")
    return gpus


def cluster_pins(spec: dict, path: str) -> list[tuple[str, str | None, str]]:
    pins = [(join(path, "rayVersion"), spec.get("rayVersion"), f"rayVersion {spec.get('rayVersion')!r}")]
    groups = [("headGroupSpec", child_map(spec, "headGroupSpec"))]
    groups += [(join("workerGroupSpecs", i), g) for i, g in enumerate(child_list(spec, "workerGroupSpecs"))]
    for gpath, group in groups:
        image = ray_container(group).get("image")
        if isinstance(image, str):
            where = join(join(join(join(join(path, gpath), "template"), "spec"), "containers"), 0)
            pins.append((join(where, "image"), image_ray_version(image), f"image {image!r}"))
    return pins


def check_cluster_spec(spec: Any, path: str, expected_ray: str, out: Problems) -> None:
    if not isinstance(spec, dict):
        return
    if isinstance(spec.get("headGroupSpec"), dict):
        check_head(spec["headGroupSpec"], join(path, "headGroupSpec"), out)
    groups = child_list(spec, "workerGroupSpecs")
    gpus = [check_worker(g, join(join(path, "workerGroupSpecs"), i), out)
            for i, g in enumerate(groups) if isinstance(g, dict)]
    if not any(gpus) and None not in gpus:
        out.add(join(path, "workerGroupSpecs"), f"no worker group holds GPUs ({GPU_RESOURCE} limit >= 1); "
                                                f"lbdist needs GPU workers")
    scaling = [g.get("groupName") for g in groups
               if isinstance(g, dict) and g.get("minReplicas") != g.get("maxReplicas")]
    if scaling and spec.get("enableInTreeAutoscaling") is not True:
        out.add(join(path, "enableInTreeAutoscaling"),
                f"{spec.get('enableInTreeAutoscaling')!r}: worker groups {scaling} have minReplicas != "
                f"maxReplicas, which only the autoscaler uses; set enableInTreeAutoscaling: true")
    pins = cluster_pins(spec, path)
    for ppath, version, what in pins:
        out.extend(check_ray_pin(version if isinstance(version, str) else None, what, ppath, expected_ray))
    out.extend(check_same_pins([(p, v) for p, v, _ in pins if isinstance(v, str)]))


# --- RayJob, RayService, the document -------------------------------------------------------------------

def check_int_field(spec: dict, key: str, minimum: int, out: Problems) -> None:
    value = spec.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        out.add(join("spec", key), f"{value!r} is not allowed: a whole number >= {minimum}")


def embedded_yaml(text: Any, path: str, what: str, out: Problems) -> dict | None:
    """A mapping held in a YAML string field (runtimeEnvYAML, serveConfigV2), or None after reporting."""
    try:
        value = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError as err:
        out.add(path, f"not YAML ({err}); must be {what}")
        return None
    if not isinstance(value, dict):
        out.add(path, f"must be {what}")
        return None
    return value


def check_job(spec: dict, expected_ray: str, out: Problems) -> None:
    """The rules the operator applies to a RayJob when it runs it, checked before it is applied."""
    from .serve_config import check_runtime_env

    mode = spec.get("submissionMode", "K8sJobMode")
    if mode not in SUBMISSION_MODES:
        out.add("spec.submissionMode", f"{mode!r} is not allowed; allowed: {', '.join(SUBMISSION_MODES)}")
    entrypoint = spec.get("entrypoint")
    if mode != "InteractiveMode" and not (isinstance(entrypoint, str) and entrypoint.strip()):
        out.add("spec.entrypoint", f"missing: {mode} submits spec.entrypoint "
                                   f"(e.g. python jobs/calibrate_hunyuan.py ...)")
    if ("rayClusterSpec" in spec) == bool(spec.get("clusterSelector")):
        out.add("spec.rayClusterSpec", "give exactly one of rayClusterSpec (a cluster for this job) and "
                                       "clusterSelector (an existing RayCluster)")
    for key, minimum in (("backoffLimit", 0), ("activeDeadlineSeconds", 1), ("ttlSecondsAfterFinished", 0),
                         ("preRunningDeadlineSeconds", 1)):
        check_int_field(spec, key, minimum, out)
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    if not isinstance(shutdown, bool):
        out.add("spec.shutdownAfterJobFinishes", f"{shutdown!r} is not allowed: true or false")
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if isinstance(ttl, int) and ttl > 0 and shutdown is not True:
        out.add("spec.ttlSecondsAfterFinished", f"{ttl} needs shutdownAfterJobFinishes: true (the TTL is how "
                                                f"long the finished job's cluster is kept before deletion)")
    if "runtimeEnvYAML" in spec:
        env = embedded_yaml(spec["runtimeEnvYAML"], "spec.runtimeEnvYAML",
                            "a YAML string holding a runtime_env mapping (pip, env_vars, working_dir, ...)", out)
        if env is not None:
            out.extend(check_runtime_env(env, "spec.runtimeEnvYAML"))
    check_cluster_spec(spec.get("rayClusterSpec"), "spec.rayClusterSpec", expected_ray, out)


def check_service(spec: dict, expected_ray: str, out: Problems) -> None:
    from .serve_config import check_serve

    if "serveConfigV2" in spec:
        serve = embedded_yaml(spec["serveConfigV2"], "spec.serveConfigV2",
                              "a YAML string (`serveConfigV2: |`) holding a Serve config with applications:", out)
        if serve is not None:
            out.extend(Problem(f"spec.serveConfigV2.{p.path}" if p.path else "spec.serveConfigV2", p.message)
                       for p in check_serve(serve, expected_ray))
    check_cluster_spec(spec.get("rayClusterConfig"), "spec.rayClusterConfig", expected_ray, out)


def check_manifest(doc: dict, expected_ray: str) -> list[Problem]:
    """Every problem of one KubeRay manifest (a parsed YAML document with apiVersion and kind)."""
    out = Problems()
    kind = doc.get("kind")
    if doc.get("apiVersion") != API_VERSION:
        out.add("apiVersion", f"{doc.get('apiVersion')!r} is not allowed; lbdist's manifests use {API_VERSION}")
    if not isinstance(kind, str) or kind not in KINDS:
        out.add("kind", f"{kind!r} is not a kind lbdist checks; allowed: {', '.join(KINDS)}")
        return out.items
    out.extend(check_shape(doc, document_shape(KINDS[kind]), ""))
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return out.items
    if kind == "RayCluster":
        check_cluster_spec(spec, "spec", expected_ray, out)
    elif kind == "RayJob":
        check_job(spec, expected_ray, out)
    else:
        check_service(spec, expected_ray, out)
    return out.items
