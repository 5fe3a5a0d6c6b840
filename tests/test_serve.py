"""The jobs API on a real Ray Serve instance on loopback, over real HTTP, with tiny real-class models on the CPU.

One Ray cluster and one Serve instance serve the module (start-up dominates): the video application (tiny Wan,
five adapter sets: two that fit, three that do not) at `/`, and an image application (tiny FLUX) at `/img`. Tests
run in file order; the replica-kill and restart tests come last because they disturb the service.
"""
from __future__ import annotations

import io
import json
import socket
import tempfile
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")

from lbdist import GenerationRequest, Schedule  # noqa: E402

STEPS = 12          # adapter sets are calibrated for schedule "3" over 12 steps
LEASE_S = 4.0
MAX_QUEUED = 3
TERMINAL = ("completed", "failed", "cancelled")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adapter_sets(root: str) -> dict[str, str]:
    from lbdist.bridge import random_adapter_set
    from lbdist.generation.loading import load_pipeline

    wan = load_pipeline("tiny:wan", "cpu", "float32").pipe.transformer
    flux = load_pipeline("tiny:flux", "cpu", "float32").pipe.transformer
    sets = {"A": random_adapter_set(wan, Schedule.parse("3", STEPS), seed=1),
            "B": random_adapter_set(wan, Schedule.parse("3", STEPS), seed=2),
            "flux": random_adapter_set(flux, Schedule.parse("3", STEPS)),
            "wan4": random_adapter_set(wan, Schedule.parse("4", STEPS)),
            "partial": random_adapter_set(wan, Schedule.parse("3", STEPS), seed=3)}
    partial = sets["partial"]
    for key in sorted(partial.weights)[:3]:
        del partial.weights[key]
    return {name: str(s.save(f"{root}/adapters/{name}")) for name, s in sets.items()}


@pytest.fixture(scope="module")
def svc():
    from ray import serve

    from lbdist.serve.app import build_app

    root = tempfile.mkdtemp(prefix="lbdist-serve-")
    metrics_port, http_port = _port(), _port()
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False,
             _metrics_export_port=metrics_port, _system_config={"metrics_report_interval_ms": 1000})
    serve.start(http_options={"host": "127.0.0.1", "port": http_port})
    args = {"model": "tiny:wan", "device": "cpu", "threads": 1, "replica_cpus": 0.5, "storage": f"{root}/jobs",
            "adapters": _adapter_sets(root), "max_queued_jobs": MAX_QUEUED, "max_adapters_per_replica": 2,
            "lease_s": LEASE_S, "progress_s": 0.1, "probe_interval_s": 5}
    serve.run(build_app(args), name="video", route_prefix="/")
    image_args = {"model": "tiny:flux", "device": "cpu", "threads": 1, "replica_cpus": 0.5,
                  "storage": f"{root}/image-jobs"}
    serve.run(build_app(image_args), name="image", route_prefix="/img")
    yield type("Svc", (), {"url": f"http://127.0.0.1:{http_port}", "root": root, "args": args, "serve": serve,
                           "build_app": build_app, "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
                           "completed": []})
    serve.shutdown()
    ray.shutdown()


def post(svc, body, path="/v1/videos", **kw):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.post(svc.url + path, data=data, headers={"content-type": "application/json"}, timeout=60, **kw)


def get(svc, path, **kw):
    return requests.get(svc.url + path, timeout=60, **kw)


def wait_for(svc, job_id: str, until=TERMINAL, timeout: float = 120.0, poll: float = 0.05) -> tuple[dict, list]:
    """Poll a job until its status is in `until`; returns the last view and every (status, steps_done) seen."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(svc, f"/v1/videos/{job_id}").json()
        seen.append((job["status"], job["steps_done"]))
        if job["status"] in until:
            return job, seen
        time.sleep(poll)
    raise AssertionError(f"job {job_id} still {seen[-1]} after {timeout} s")


def submit(svc, body, timeout: float = 120.0) -> dict:
    """POST, retrying while the service answers 429/503 (it is busy or restarting)."""
    deadline = time.monotonic() + timeout
    while True:
        r = post(svc, body)
        if r.status_code not in (429, 503) or time.monotonic() > deadline:
            assert r.status_code == 202, r.text
            return r.json()
        time.sleep(float(r.headers.get("Retry-After", 1)) if r.status_code == 429 else 1.0)


# --- happy paths ------------------------------------------------------------------------------------------------
def test_video_job_goes_queued_in_progress_completed_with_rising_progress(svc):
    r = post(svc, {"prompt": "a red circle moving left", "num_inference_steps": 200, "seed": 7})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["id"].startswith("video_") and r.headers["Location"].endswith(job["id"])
    assert job["steps_total"] == 200 and job["size"] == "16x16" and job["num_frames"] == 5
    final, seen = wait_for(svc, job["id"], poll=0.02)
    order = {"queued": 0, "in_progress": 1, "completed": 2}
    assert [order[s] for s, _ in seen] == sorted(order[s] for s, _ in seen), seen
    running = [d for s, d in seen if s == "in_progress"]
    assert len(set(d for d in running if 0 < d < 200)) >= 2, f"progress never rose while running: {seen}"
    assert running == sorted(running)
    assert final["status"] == "completed" and final["progress"] == 100 and final["steps_done"] == 200
    assert final["result"]["calls"]["full"] == 400 and final["error"] is None and final["elapsed_s"] > 0
    content = get(svc, f"/v1/videos/{job['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "video/mp4"
    assert content.content[4:8] == b"ftyp" and int(content.headers["content-length"]) == len(content.content)
    import imageio.v3 as iio

    frames = iio.imread(io.BytesIO(content.content), extension=".mp4")
    assert frames.shape[0] == 5 and frames.shape[1:3] == (16, 16)
    svc.completed.append(job["id"])


def test_bridged_job_with_adapter_set_and_list(svc):
    job = submit(svc, {"prompt": "a blue square", "num_inference_steps": STEPS, "schedule": "3", "adapters": "A"})
    final, _ = wait_for(svc, job["id"])
    assert final["status"] == "completed", final
    assert final["result"]["calls"]["calibrated"] > 0 and final["request"]["adapters"] == "A"
    svc.completed.append(job["id"])
    listing = get(svc, "/v1/videos", params={"limit": 1}).json()
    assert listing["object"] == "list" and listing["data"][0]["id"] == job["id"] and listing["has_more"]
    older = get(svc, "/v1/videos", params={"after": job["id"], "limit": 100}).json()
    assert svc.completed[0] in [j["id"] for j in older["data"]]
    assert get(svc, "/v1/models").json()["data"][0]["id"] == "tiny:wan"


def test_image_endpoint_png_and_b64(svc):
    import base64

    from PIL import Image

    r = post(svc, {"prompt": "a green triangle", "num_inference_steps": 4, "seed": 1},
             path="/img/v1/images/generations")
    assert r.status_code == 200, r.text
    body = r.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"])))
    assert image.size == (16, 16) and body["calls"]["full"] == 4
    r = post(svc, {"prompt": "a green triangle", "num_inference_steps": 4, "seed": 1, "response_format": "png",
                   "size": "32x16"}, path="/img/v1/images/generations")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (32, 16)
    same = np.asarray(Image.open(io.BytesIO(r.content)))
    again = post(svc, {"prompt": "a green triangle", "num_inference_steps": 4, "seed": 1, "response_format": "png",
                       "size": "32x16"}, path="/img/v1/images/generations")
    assert np.array_equal(same, np.asarray(Image.open(io.BytesIO(again.content))))  # same seed, same image
    wrong = post(svc, {"prompt": "a video please"}, path="/img/v1/videos")
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_endpoint"


# --- validation ---------------------------------------------------------------------------------------------------
P = {"prompt": "a red circle"}
A = {"num_inference_steps": STEPS, "schedule": "3"}
BAD = [  # (body or raw text, status, code, param)
    ({}, 422, "missing_field", "prompt"),
    ({"prompt": ""}, 400, "invalid_value", "prompt"),
    ({"prompt": "   "}, 400, "invalid_value", "prompt"),
    ({"prompt": "x" * 4001}, 400, "invalid_value", "prompt"),
    ({"prompt": 5}, 422, "invalid_type", "prompt"),
    ({**P, "frames": 9}, 422, "unknown_field", "frames"),
    ({**P, "num_frames": 6}, 400, "invalid_value", "num_frames"),
    ({**P, "num_frames": 0}, 400, "invalid_value", "num_frames"),
    ({**P, "num_frames": 2000}, 400, "invalid_value", "num_frames"),
    ({**P, "height": 17}, 400, "invalid_value", "height"),
    ({**P, "width": 24}, 400, "invalid_value", "width"),
    ({**P, "size": "17x32"}, 400, "invalid_value", "size"),
    ({**P, "size": "big"}, 400, "invalid_value", "size"),
    ({**P, "size": "16x16", "width": 16}, 400, "invalid_value", "size"),
    ({**P, "num_inference_steps": 0}, 400, "invalid_value", "num_inference_steps"),
    ({**P, "num_inference_steps": 1001}, 400, "invalid_value", "num_inference_steps"),
    ({**P, "num_inference_steps": "20"}, 422, "invalid_type", "num_inference_steps"),
    ({**P, "guidance_scale": -1}, 400, "invalid_value", "guidance_scale"),
    ({**P, "guidance_scale": 51}, 400, "invalid_value", "guidance_scale"),
    ({**P, "guidance_scale": "high"}, 422, "invalid_type", "guidance_scale"),
    ({**P, "seed": -1}, 400, "invalid_value", "seed"),
    ({**P, "seed": 2**63}, 400, "invalid_value", "seed"),
    ({**P, "seed": 1.5}, 422, "invalid_type", "seed"),
    ({**P, "schedule": "fast"}, 400, "invalid_value", "schedule"),
    ({**P, "num_inference_steps": STEPS, "schedule": "1"}, 400, "invalid_value", "schedule"),
    ({**P, "num_inference_steps": STEPS, "schedule": "steps:0,40"}, 400, "invalid_value", "schedule"),
    ({**P, **A, "adapters": "nope"}, 400, "unknown_adapter_set", "adapters"),
    ({**P, "schedule": None, "adapters": "A"}, 400, "invalid_value", "adapters"),
    ({**P, **A, "adapters": "flux"}, 400, "adapter_mismatch", "adapters"),
    ({**P, **A, "adapters": "wan4"}, 400, "adapter_mismatch", "adapters"),
    ({**P, "num_inference_steps": 20, "schedule": "3", "adapters": "A"}, 400, "adapter_mismatch", "adapters"),
    ({**P, **A, "adapters": "partial"}, 400, "adapter_mismatch", "allow_uncovered"),
    ({**P, "output_format": "png"}, 400, "invalid_value", "output_format"),
    ({**P, "output_format": "avi"}, 400, "invalid_value", "output_format"),
    ({**P, "fps": 0}, 400, "invalid_value", "fps"),
    ({**P, "model": "sora-2"}, 400, "unknown_model", "model"),
    ('{"prompt": "unterminated', 422, "invalid_json", None),
    ('["a list"]', 422, "invalid_type", "body"),
    ({**P, "negative_prompt": 5}, 422, "invalid_type", "negative_prompt"),
    ({**P, "allow_uncovered": "yes"}, 422, "invalid_type", "allow_uncovered"),
]


def test_bad_requests_answer_4xx_naming_the_field_and_service_stays_healthy(svc):
    assert len(BAD) >= 30
    for body, status, code, param in BAD:
        r = post(svc, body)
        assert r.status_code == status, (body if len(str(body)) < 200 else str(body)[:80], r.text)
        error = r.json()["error"]
        assert error["code"] == code and error["param"] == param, (body, error)
        assert error["message"] and "\n" not in error["message"], error
        if param and status == 400 and code == "invalid_value" and param != "size":
            assert param in error["message"] or "schedule" in error["message"], error
    # the HTTP layer's message is GenerationRequest's own
    try:
        GenerationRequest("x", seed=-1)
    except ValueError as exc:
        assert post(svc, {**P, "seed": -1}).json()["error"]["message"] == str(exc)
    other = [(get(svc, "/v1/videos", params={"limit": 0}), 400, "limit"),
             (get(svc, "/v1/videos", params={"order": "up"}), 400, "order"),
             (get(svc, "/v1/videos", params={"limit": "abc"}), 422, "limit"),
             (post(svc, P, path="/v1/images/generations"), 400, "model")]
    for r, status, param in other:
        assert r.status_code == status and r.json()["error"]["param"] == param, r.text
    health = get(svc, "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["queue"] == 0
    job = submit(svc, {**P, "num_inference_steps": 4})
    assert wait_for(svc, job["id"])[0]["status"] == "completed"


def test_unknown_ids_answer_404(svc):
    for job_id in ("video_" + "0" * 24, "video_nothex", "../../etc/passwd", "x"):
        for method, path in (("GET", f"/v1/videos/{job_id}"), ("GET", f"/v1/videos/{job_id}/content"),
                             ("DELETE", f"/v1/videos/{job_id}")):
            r = requests.request(method, svc.url + path, timeout=30)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)


# --- cancel ---------------------------------------------------------------------------------------------------
def test_cancel_stops_a_running_job_within_one_step(svc):
    job = submit(svc, {**P, "num_inference_steps": 1000})
    running, _ = wait_for(svc, job["id"], until=("in_progress",))
    while running["steps_done"] < 3:
        running = get(svc, f"/v1/videos/{job['id']}").json()
    r = requests.delete(f"{svc.url}/v1/videos/{job['id']}", timeout=30)
    assert r.status_code == 200
    final, _ = wait_for(svc, job["id"], timeout=LEASE_S + 10)
    assert final["status"] == "cancelled", final
    assert final["error"]["code"] == "cancelled" and final["steps_done"] < 1000
    record = json.loads(open(f"{svc.root}/jobs/jobs/{job['id']}/job.json").read())
    assert record["error"]["steps_after_request"] <= 1, record["error"]  # stopped at the next step boundary
    assert get(svc, f"/v1/videos/{job['id']}/content").json()["error"]["code"] == "video_not_ready"
    again = requests.delete(f"{svc.url}/v1/videos/{job['id']}", timeout=30)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    done = requests.delete(f"{svc.url}/v1/videos/{svc.completed[0]}", timeout=30)
    assert done.status_code == 409 and done.json()["error"]["code"] == "job_finished"


def test_cancel_a_queued_job(svc):
    long = submit(svc, {**P, "num_inference_steps": 1000})
    wait_for(svc, long["id"], until=("in_progress",))
    queued = submit(svc, {**P, "num_inference_steps": 4})
    r = requests.delete(f"{svc.url}/v1/videos/{queued['id']}", timeout=30)
    assert r.json()["status"] == "cancelled" and r.json()["error"]["message"] == "cancelled while queued"
    requests.delete(f"{svc.url}/v1/videos/{long['id']}", timeout=30)
    assert wait_for(svc, long["id"])[0]["status"] == "cancelled"
    time.sleep(0.5)
    assert get(svc, f"/v1/videos/{queued['id']}").json()["attempts"] == 0  # no replica ever ran it


# --- adapter multiplexing -----------------------------------------------------------------------------------
def test_multiplexing_loads_each_adapter_set_once(svc):
    from ray import serve

    handle = serve.get_deployment_handle("GeneratorDeployment", app_name="video")
    ids = [submit(svc, {**P, **A, "adapters": name, "seed": i})["id"] for i, name in enumerate("ABABAB")]
    for job_id in ids:
        final, _ = wait_for(svc, job_id)
        assert final["status"] == "completed" and final["result"]["calls"]["calibrated"] > 0, final
    stats = handle.stats.remote().result()
    assert stats["adapter_loads"] == {"A": 1, "B": 1}, stats  # six jobs, two sets, one load each
    assert stats["adapter_injections"] == 2 and sorted(stats["resident"]) == ["A", "B"], stats


# --- backpressure -------------------------------------------------------------------------------------------
def test_overload_answers_429_with_retry_after_and_loses_nothing(svc):
    answers = [post(svc, {**P, "num_inference_steps": 40, "seed": i}) for i in range(12)]
    accepted = [r.json()["id"] for r in answers if r.status_code == 202]
    refused = [r for r in answers if r.status_code != 202]
    assert refused and all(r.status_code == 429 for r in refused), [r.text for r in refused]
    assert all(int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "queue_full" for r in refused)
    assert MAX_QUEUED <= len(accepted) <= MAX_QUEUED + 2, len(accepted)
    for job_id in accepted:
        assert wait_for(svc, job_id)[0]["status"] == "completed"
    listed = {j["id"] for j in get(svc, "/v1/videos", params={"limit": 100}).json()["data"]}
    assert set(accepted) <= listed


def test_prometheus_metrics(svc):
    names = ["ray_lbdist_queue_length", "ray_lbdist_jobs", "ray_lbdist_step_latency_seconds",
             "ray_lbdist_generation_latency_seconds", "ray_lbdist_transformer_calls_total",
             "ray_lbdist_adapter_loads_total", "ray_lbdist_rejected_total", "ray_lbdist_jobs_finished_total"]
    deadline, missing = time.monotonic() + 60, names
    while missing and time.monotonic() < deadline:
        text = requests.get(svc.metrics, timeout=10).text
        missing = [n for n in names if n not in text]
        time.sleep(1)
    assert not missing, missing
    calls = [line for line in text.splitlines() if line.startswith("ray_lbdist_transformer_calls_total")]
    assert any('kind="calibrated"' in line for line in calls) and any('kind="full"' in line for line in calls)


def test_bench_serve_load_test_client_loses_nothing(svc):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import bench_serve

    result = bench_serve.load_test(svc.url, {**P, "num_inference_steps": 4}, jobs=10, concurrency=3)
    assert result["completed"] == result["accepted"] == 10 and result["lost"] == 0, result
    assert 0 < result["latency_p50_s"] <= result["latency_p95_s"] and result["throughput_jobs_s"] > 0


# --- failures -------------------------------------------------------------------------------------------------
def _generator_replicas(app: str = "video") -> list[str]:
    prefix = f"SERVE_REPLICA::{app}#GeneratorDeployment#"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def test_killed_replica_fails_its_job_within_the_lease_and_service_recovers(svc):
    job = submit(svc, {**P, "num_inference_steps": 1000})
    wait_for(svc, job["id"], until=("in_progress",))
    [name] = _generator_replicas()
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    killed = time.monotonic()
    final, _ = wait_for(svc, job["id"], timeout=LEASE_S + 15)
    assert final["status"] == "failed" and final["error"]["code"] in ("replica_died", "lease_expired"), final
    assert time.monotonic() - killed <= LEASE_S + 15
    fresh = submit(svc, {**P, "num_inference_steps": 4}, timeout=180)  # Serve starts a new replica
    assert wait_for(svc, fresh["id"], timeout=180)[0]["status"] == "completed"
    assert _generator_replicas() != [name]
    for job_id in svc.completed:
        assert get(svc, f"/v1/videos/{job_id}").json()["status"] == "completed"
        assert get(svc, f"/v1/videos/{job_id}/content").status_code == 200


def test_restarted_application_serves_earlier_jobs(svc):
    svc.serve.delete("video")
    svc.serve.run(svc.build_app(svc.args), name="video", route_prefix="/")
    listing = get(svc, "/v1/videos", params={"limit": 100}).json()
    listed = {j["id"]: j["status"] for j in listing["data"]}
    for job_id in svc.completed:
        assert listed.get(job_id) == "completed"
        content = get(svc, f"/v1/videos/{job_id}/content")
        assert content.status_code == 200 and content.content[4:8] == b"ftyp"
    assert not [s for s in listed.values() if s in ("queued", "in_progress")], listed
