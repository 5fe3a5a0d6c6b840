"""A sequence-parallel Serve replica on the CPU: sp_degree 2 (two gloo ranks running xfuser's Ulysses wrapper),
reserved through the replica's placement-group bundles (STRICT_PACK), serving bridged jobs with a multiplexed
adapter set resident on both ranks, and cancelling on every rank at one step boundary. Own Ray instance."""
from __future__ import annotations

import socket
import tempfile
import time

import pytest

ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")
pytest.importorskip("fastapi")

from lbdist import Schedule  # noqa: E402
from lbdist.parallel import xdit  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (xdit.installed("xfuser") and xdit.installed("yunchang")),
                                 reason="needs the [sp] extra: pip install 'lbdist[sp]'")]
STEPS = 12


@pytest.fixture(scope="module")
def url():
    from ray import serve

    from lbdist.bridge import random_adapter_set
    from lbdist.generation.loading import load_pipeline
    from lbdist.serve.app import build_app

    root = tempfile.mkdtemp(prefix="lbdist-serve-sp-")
    wan = load_pipeline("tiny:wan", "cpu", "float32").pipe.transformer
    adapters = str(random_adapter_set(wan, Schedule.parse("3", STEPS)).save(f"{root}/A"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": "tiny:wan", "device": "cpu", "sp_degree": 2, "replica_cpus": 0.2,
                         "worker": {"cpus_per_worker": 0.6, "call_timeout_s": 300}, "storage": f"{root}/jobs",
                         "adapters": {"A": adapters}, "lease_s": 20, "probe_interval_s": 0}),
              name="sp", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _wait(url, job_id, until=("completed", "failed", "cancelled"), timeout=180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/v1/videos/{job_id}", timeout=30).json()
        if job["status"] in until:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} still {job['status']}")


def test_sp_replica_reserves_its_bundles_and_serves_bridged_jobs(url):
    from ray import serve
    from ray.util.placement_group import placement_group_table

    groups = [g for g in placement_group_table().values() if g["state"] == "CREATED"]
    assert any(g["strategy"] == "STRICT_PACK" and len(g["bundles"]) == 3 for g in groups), groups
    body = {"prompt": "a red circle", "num_inference_steps": STEPS, "schedule": "3", "adapters": "A"}
    for seed in (1, 2):
        job = requests.post(f"{url}/v1/videos", json={**body, "seed": seed}, timeout=30).json()
        final = _wait(url, job["id"])
        assert final["status"] == "completed" and final["result"]["calls"]["calibrated"] > 0, final
    stats = serve.get_deployment_handle("GeneratorDeployment", app_name="sp").stats.remote().result()
    assert stats["adapter_loads"] == {"A": 1} and stats["adapter_injections"] == 1, stats


def test_sp_cancel_stops_every_rank_and_the_group_keeps_serving(url):
    job = requests.post(f"{url}/v1/videos", json={"prompt": "a red circle", "num_inference_steps": 1000},
                        timeout=30).json()
    running = _wait(url, job["id"], until=("in_progress",))
    while running["steps_done"] < 2:
        running = requests.get(f"{url}/v1/videos/{job['id']}", timeout=30).json()
    requests.delete(f"{url}/v1/videos/{job['id']}", timeout=30)
    final = _wait(url, job["id"], timeout=30)
    assert final["status"] == "cancelled" and final["steps_done"] < 1000, final
    again = requests.post(f"{url}/v1/videos", json={"prompt": "a blue square", "num_inference_steps": 4},
                          timeout=30).json()
    assert _wait(url, again["id"])["status"] == "completed"
