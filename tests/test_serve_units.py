"""The Serve layer without Ray: settings, request conversion, the job store on memory://, and the ingress's job
service driving a real replica worker (tiny Wan in this process) through injected dispatch functions, to check
retries, leases, backpressure and lost ownership deterministically."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

pytest.importorskip("fastapi")

from lbdist import GenerationRequest  # noqa: E402
from lbdist.serve.jobs import JobRecord, JobStore, new_job_id  # noqa: E402
from lbdist.serve.schemas import (ApiError, VideoCreateRequest, param_of, pydantic_error,  # noqa: E402
                                  to_generation_request)
from lbdist.serve.settings import GENERATOR, INGRESS, deployment_options, parse_settings  # noqa: E402


# --- settings ---------------------------------------------------------------------------------------------------
def test_settings_refuse_unknown_keys_and_bad_values_naming_them():
    with pytest.raises(ValueError, match=r"max_queud_jobs: unknown key; allowed keys: model, .*max_queued_jobs"):
        parse_settings({"model": "tiny:wan", "max_queud_jobs": 4})
    with pytest.raises(ValueError, match=r"sp_degree: Input should be greater than or equal to 1"):
        parse_settings({"model": "tiny:wan", "sp_degree": 0})
    with pytest.raises(ValueError, match=r"schedule 'fast' is not a schedule"):
        parse_settings({"model": "tiny:wan", "schedule": "fast"})
    with pytest.raises(ValueError, match=r"default_adapters 'x' is not a key of adapters \['a'\]"):
        parse_settings({"model": "tiny:wan", "adapters": {"a": "/sets/a"}, "default_adapters": "x"})
    with pytest.raises(ValueError, match=r"model: Field required"):
        parse_settings({})
    with pytest.raises(ValueError, match=r"ulysses\(2\) \* ring\(3\)"):
        parse_settings({"model": "tiny:wan", "sp_degree": 2, "worker": {"ulysses_degree": 2, "ring_degree": 3}}
                       ).check_worker_group()


def test_deployment_options_reserve_an_sp_group_with_strict_pack():
    options = deployment_options(parse_settings({"model": "m", "sp_degree": 4, "max_replicas": 2,
                                                 "max_queued_jobs": 8}), gpus=True)
    gen = options[GENERATOR]
    assert gen["max_ongoing_requests"] == 1 and gen["placement_group_strategy"] == "STRICT_PACK"
    assert gen["placement_group_bundles"] == [{"CPU": 1.0}] + [{"CPU": 1.0, "GPU": 1}] * 4
    assert gen["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0}
    assert gen["autoscaling_config"]["max_replicas"] == 2 and gen["max_queued_requests"] >= 8
    one = deployment_options(parse_settings({"model": "m"}), gpus=True)[GENERATOR]
    assert one["ray_actor_options"]["num_gpus"] == 1 and "placement_group_bundles" not in one
    assert deployment_options(parse_settings({"model": "m"}), gpus=False)[INGRESS]["num_replicas"] == 1


def test_manifest_name_matches_the_adapter_set_module():
    from lbdist.bridge.adapter_set import MANIFEST
    from lbdist.serve.catalog import MANIFEST as SERVE_MANIFEST

    assert SERVE_MANIFEST == MANIFEST


# --- request conversion ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [{"seed": -1}, {"num_inference_steps": 0}, {"guidance_scale": 99.0},
                                    {"prompt": ""}, {"fps": 500}, {"schedule": "fast"}, {"output_format": "avi"}])
def test_http_errors_are_generation_request_errors(fields):
    body = VideoCreateRequest(**{"prompt": "x", **fields})
    with pytest.raises(ValueError) as direct:
        GenerationRequest(**{"prompt": "x", **fields})
    with pytest.raises(ApiError) as http:
        to_generation_request(body)
    assert http.value.message == str(direct.value) and http.value.status == 400
    assert http.value.param == next(iter(fields))


def test_defaults_size_and_strict_types():
    body = VideoCreateRequest(prompt="x", size="32x16")
    request = to_generation_request(body, default_schedule="3", default_adapters="A")
    assert (request.width, request.height, request.schedule, request.adapters) == (32, 16, "3", "A")
    explicit = to_generation_request(VideoCreateRequest(prompt="x", schedule=None), default_schedule="3")
    assert explicit.schedule is None  # null asks for full compute
    with pytest.raises(Exception) as exc:
        VideoCreateRequest.model_validate({"prompt": "x", "seed": "5", "colour": 1})
    err = pydantic_error(exc.value.errors())
    assert err.status == 422 and err.param == "seed" and "colour: unknown field" in err.message
    assert param_of("num_frames=6: wan needs 4k+1 frames") == "num_frames"
    assert param_of("cannot parse schedule 'x'") == "schedule"


# --- job store ------------------------------------------------------------------------------------------------
def test_job_store_on_memory_storage():
    store = JobStore(f"memory://lbdist-test-{uuid.uuid4().hex[:8]}")
    ids = [new_job_id() for _ in range(3)]
    for job_id in ids:
        store.put(JobRecord(id=job_id, model="m", request={"num_inference_steps": 4}))
        time.sleep(0.002)
    assert store.ids() == sorted(ids) == ids  # ids sort by creation time
    record = store.get(ids[0])
    assert record.status == "queued" and store.get("video_" + "0" * 24) is None and store.get("../x") is None
    assert store.cancel_requested(ids[0]) is None
    store.request_cancel(ids[0])
    assert store.cancel_requested(ids[0]) <= time.time()
    running = record.update(status="in_progress", heartbeat_at=time.time() - 10)
    assert running.lease_expired(5) and not running.lease_expired(20) and not record.lease_expired(0)
    from lbdist import storage

    path = store.output_path(ids[1], "mp4")
    storage.write_bytes(path, b"x" * 3_000_000)
    assert b"".join(store.read_chunks(path)) == b"x" * 3_000_000 and store.size(path) == 3_000_000
    with pytest.raises(ValueError, match="job status must be one of"):
        record.update(status="done")


# --- the job service with a real replica worker, dispatch injected -------------------------------------------
class Died(RuntimeError):
    pass


class Busy(RuntimeError):
    pass


@pytest.fixture(scope="module")
def worker_settings():
    return {"model": "tiny:wan", "device": "cpu", "threads": 1, "storage": f"memory://lbdist-svc-{uuid.uuid4().hex[:8]}",
            "lease_s": 1.0, "max_queued_jobs": 4}


@pytest.fixture(scope="module")
def worker(worker_settings):
    from lbdist.serve.runner import ReplicaWorker

    w = ReplicaWorker(parse_settings(worker_settings), "r1", gpus=False)
    yield w
    w.close()


def _service(settings: dict, worker, script: list):
    """A JobService whose dispatch follows `script`: "die-after-claim", "busy", or "run" (the default)."""
    from lbdist.serve.service import JobService

    async def dispatch(job_id, adapter_id):
        step = script.pop(0) if script else "run"
        if step == "busy":
            raise Busy("max_queued_requests")
        if step == "die-after-claim":
            await asyncio.to_thread(worker._claim, job_id)
            raise Died("the actor died unexpectedly")
        return await worker.run_job(job_id)

    async def image(request, adapter_id):
        raise Busy("max_queued_requests")

    def classify(exc):
        return {Died: "replica_died", Busy: "backpressure"}.get(type(exc))

    return JobService(parse_settings(settings), dispatch, image, classify)


async def _until_terminal(service, job_id, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await service.sweep()
        view = await service.get_video(job_id)
        if view.status in ("completed", "failed", "cancelled"):
            return view
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} did not finish")


@pytest.mark.parametrize("retries,expected", [(0, "failed"), (1, "completed")])
def test_replica_death_fails_or_retries_once(worker_settings, worker, retries, expected):
    async def main():
        service = _service({**worker_settings, "retries": retries}, worker, ["die-after-claim"])
        job = await service.create_video(VideoCreateRequest(prompt="a red circle", num_inference_steps=4))
        view = await _until_terminal(service, job.id)
        assert view.status == expected, view
        if expected == "failed":
            assert view.error.code == "replica_died" and "died unexpectedly" in view.error.message
        else:
            assert view.attempts == 2 and service.store.get(job.id).notes[0].startswith("attempt 1: replica_died")

    asyncio.run(main())


def test_backpressure_keeps_the_job_queued_until_it_runs(worker_settings, worker):
    async def main():
        service = _service(worker_settings, worker, ["busy", "busy"])
        job = await service.create_video(VideoCreateRequest(prompt="a red circle", num_inference_steps=4))
        assert (await _until_terminal(service, job.id)).status == "completed"
        from dataclasses import replace

        from lbdist.serve.schemas import ImageCreateRequest

        # a synchronous image request refused by Serve's own bound answers 503 with Retry-After
        service.facts = replace(service.facts, info=replace(service.facts.info, is_video=False, frame_rule=0))
        with pytest.raises(ApiError) as exc:
            await service.create_image(ImageCreateRequest(prompt="x", num_inference_steps=2))
        assert exc.value.status == 503 and exc.value.headers["Retry-After"]

    asyncio.run(main())


def test_expired_lease_fails_the_job_and_the_worker_stops_writing(worker_settings, worker):
    async def main():
        service = _service(worker_settings, worker, [])
        job = await service.create_video(VideoCreateRequest(prompt="a red circle", num_inference_steps=1000))
        while (await service.get_video(job.id)).steps_done < 2:
            await asyncio.sleep(0.02)
        record = service.store.get(job.id)  # as if the replica had stopped beating long ago
        service.store.put(record.update(heartbeat_at=time.time() - 10))
        await service.sweep()
        view = await _until_terminal(service, job.id)
        assert view.status == "failed" and view.error.code == "lease_expired"
        await asyncio.sleep(1.5)  # the worker saw it lost the job: cancelled at a step boundary, wrote nothing
        assert worker.run is None and service.store.get(job.id).status == "failed"
        assert service.store.get(job.id).steps_done < 1000

    asyncio.run(main())


def test_queue_bound_answers_429(worker_settings, worker):
    async def main():
        service = _service({**worker_settings, "max_queued_jobs": 2}, worker, ["busy"] * 50)
        for _ in range(2):
            await service.create_video(VideoCreateRequest(prompt="x", num_inference_steps=2))
        with pytest.raises(ApiError) as exc:
            await service.create_video(VideoCreateRequest(prompt="x", num_inference_steps=2))
        assert exc.value.status == 429 and exc.value.code == "queue_full" and int(exc.value.headers["Retry-After"]) >= 1
        await service.stop()

    asyncio.run(main())


# --- CLI --------------------------------------------------------------------------------------------------------
def test_cli_serve_run_dry_run_and_a_typo(tmp_path, capsys):
    from lbdist.cli import main

    config = tmp_path / "video.yaml"
    config.write_text("applications:\n  - name: video\n    import_path: lbdist.serve.app:build_app\n"
                      "    args: {model: 'tiny:wan', sp_degree: 2, device: cuda, max_queued_jobs: 4}\n")
    assert main(["serve", "run", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert '"placement_group_strategy": "STRICT_PACK"' in out and '"max_ongoing_requests": 1' in out
    config.write_text(config.read_text().replace("max_queued_jobs", "max_queue_jobs"))
    assert main(["serve", "run", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "application 'video'" in err[0] and "max_queue_jobs: unknown key" in err[0]


# --- Generator methods the replicas use -----------------------------------------------------------------------
def test_generator_preloads_and_evicts_adapter_sets_without_generating(tmp_path):
    from lbdist import Generator, GeneratorConfig, Schedule
    from lbdist.bridge import random_adapter_set

    gen = Generator("tiny:wan", GeneratorConfig(device="cpu"))
    path = str(random_adapter_set(gen.pipe.transformer, Schedule.parse("3", 6)).save(tmp_path / "A"))
    assert gen.preload_adapters("A", path) is True and gen.preload_adapters("A") is False
    result = gen.generate(GenerationRequest("a red circle", num_inference_steps=6, schedule="3", adapters="A"))
    facts = gen.transformer_facts()
    assert result.calls["calibrated"] > 0 and facts["adapter_injections"] == 1  # resident: no second injection
    assert facts["transformer_classes"][0] == "WanTransformer3DModel" and len(facts["config_digest"]) == 16
    assert gen.evict_adapters("A") is True and gen.evict_adapters("A") is False
    from lbdist.generation.loading import load_pipeline

    flux = load_pipeline("tiny:flux", "cpu", "float32").pipe.transformer
    other = str(random_adapter_set(flux, Schedule.parse("3", 6)).save(tmp_path / "F"))
    with pytest.raises(ValueError, match="adapter set does not fit this pipeline: model: set is for Flux"):
        gen.preload_adapters("F", other)


def test_a_second_ingress_adopts_the_queued_jobs_of_one_that_stopped(worker_settings, worker):
    async def main():
        first = _service(worker_settings, worker, ["busy"] * 1000)  # its dispatches never get through
        second = _service(worker_settings, worker, [])
        job = await first.create_video(VideoCreateRequest(prompt="a red circle", num_inference_steps=4))
        await first.sweep()
        await asyncio.to_thread(second._rescan)
        await second.sweep()
        assert job.id not in second.inflight and service_status(second, job.id) == "queued"  # first is alive
        await first.stop()
        view = await _until_terminal(second, job.id)
        assert view.status == "completed" and second.store.get(job.id).dispatcher == second.ingress_id

    def service_status(service, job_id):
        return service.store.get(job_id).status

    asyncio.run(main())


def test_the_ingress_modules_import_no_torch():
    import subprocess
    import sys

    code = ("import sys; import lbdist.serve.api, lbdist.serve.service, lbdist.serve.settings; "
            "print(sorted(m for m in ('torch', 'diffusers', 'peft', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]
