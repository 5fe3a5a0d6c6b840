"""Serve benchmarks: a bounded CPU load test, and (GPU) Serve's overhead and replica layouts.

    # CPU (about a minute on 2 cores): tiny Wan, 200 jobs at a fixed concurrency of 8 clients
    python tools/bench_serve.py cpu --out tools/results/bench_serve_cpu.json

    # GPU, one card (~6 min): direct Generator vs the same job through Serve (Wan2.1-1.3B config, random bf16
    # weights, 480x832x81, 50 steps, bridged N=6 with a resident random rank-32 adapter set)
    python tools/bench_serve.py gpu --phases overhead --out $OUT/bench_serve_gpu.json
    # GPU, two cards (~8 min): a burst of 8 jobs on 2 replicas x SP 1, then on 1 replica x SP 2
    python tools/bench_serve.py gpu --phases replicas sp --out $OUT/bench_serve_gpu.json

CPU mode: one Ray instance on loopback, the real application (`lbdist.serve.app:build_app`) with one replica,
`--concurrency` client threads each submitting jobs (POST; a 429 is retried after its Retry-After and counted)
and polling them (GET every 100 ms: on 2 cores, faster polling from 8 clients measures the HTTP proxy) until they
finish, until `--jobs` have been accepted. Reports throughput
(completed jobs / wall seconds), p50/p95/max latency from acceptance to completion as the client saw it, the
server's own (record created -> finished), the replica's run time per job (claimed -> finished: the rest of the
latency is queueing behind the other clients' jobs), 429s, and lost jobs (accepted but not completed: must be 0).

GPU mode: `overhead` times `Generator.generate` (+ writing the mp4, as a Serve job does) in this process, three
times after a warm-up, then the same request through Serve (POST -> completed, polled every 20 ms), and reports
the overhead as a share of the job's wall time (issue 11's bar: <= 2%). `replicas` and `sp` submit a burst of 8
jobs at once to 2 replicas of SP 1 and to 1 replica of SP 2 and report throughput and p50/p95 latency. The
pipeline is built on every replica (and rank) by `lbdist.evaluate.realsize.realsize_pipeline` (the `factory` arg
of the app), seeded so that the ranks of an SP group hold identical weights. JSON (card, commit from LBDIST_COMMIT or git, date) is
written after each phase; a table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
POLL_S = [0.1]  # seconds between a client's status polls (--poll)
TERMINAL = ("completed", "failed", "cancelled")


# --- Ray and Serve --------------------------------------------------------------------------------------------
_URL: list[str] = []


def start_serve(num_cpus: int | None, num_gpus: int | None = None) -> str:
    """Ray (on loopback) and Serve, once per process; returns the HTTP address."""
    import socket

    import ray
    from ray import serve

    if _URL:
        return _URL[0]
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    _URL.append(f"http://127.0.0.1:{port}")
    return _URL[0]


def deploy(args: dict, name: str = "bench") -> float:
    """Deploy the application; returns the seconds it took to be ready (model loads included)."""
    from ray import serve

    from lbdist.serve.app import build_app

    t0 = time.perf_counter()
    serve.run(build_app(args), name=name, route_prefix="/")
    return time.perf_counter() - t0


def stop_app(name: str = "bench") -> None:
    from ray import serve

    serve.delete(name)


# --- clients --------------------------------------------------------------------------------------------------
def run_job(url: str, body: dict, session: requests.Session, stats: dict) -> dict:
    """Submit one job (retrying 429s after Retry-After) and poll it to the end; returns its timing."""
    while True:
        r = session.post(f"{url}/v1/videos", json=body, timeout=120)
        if r.status_code != 429:
            break
        stats["429"] += 1
        time.sleep(float(r.headers.get("Retry-After", "1")))
    if r.status_code != 202:
        stats["errors"].append(f"POST {r.status_code}: {r.text[:200]}")
        return {"status": "refused"}
    accepted, job = time.perf_counter(), r.json()
    while job["status"] not in TERMINAL:
        time.sleep(POLL_S[0])
        job = session.get(f"{url}/v1/videos/{job['id']}", timeout=120).json()
    done = time.perf_counter()
    server = (job["completed_at"] - job["created_at"]) if job.get("completed_at") else None
    return {"id": job["id"], "status": job["status"], "latency_s": done - accepted, "server_s": server,
            "run_s": job.get("elapsed_s")}


def load_test(url: str, body: dict, jobs: int, concurrency: int) -> dict:
    """`jobs` jobs from `concurrency` client threads; throughput, latency percentiles and lost jobs."""
    results, stats, lock, issued = [], {"429": 0, "errors": []}, threading.Lock(), [0]

    def client(i: int) -> None:
        session = requests.Session()
        while True:
            with lock:
                if issued[0] >= jobs:
                    return
                issued[0] += 1
                n = issued[0]
            out = run_job(url, {**body, "seed": n}, session, stats)
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return summarise(results, wall, stats, concurrency)


def summarise(results: list[dict], wall: float, stats: dict, concurrency: int) -> dict:
    accepted = [r for r in results if r["status"] != "refused"]
    completed = [r for r in accepted if r["status"] == "completed"]
    lat = sorted(r["latency_s"] for r in completed)
    server = sorted(r["server_s"] for r in completed if r["server_s"] is not None)
    run = sorted(r["run_s"] for r in completed if r.get("run_s") is not None)

    def pct(values, q):
        return round(values[min(len(values) - 1, int(q * len(values)))], 4) if values else None

    return {"jobs": len(results), "accepted": len(accepted), "completed": len(completed),
            "failed": sum(r["status"] == "failed" for r in accepted),
            "lost": len(accepted) - len(completed), "concurrency": concurrency, "wall_s": round(wall, 3),
            "throughput_jobs_s": round(len(completed) / wall, 3), "latency_p50_s": pct(lat, 0.5),
            "latency_p95_s": pct(lat, 0.95), "latency_max_s": round(lat[-1], 4) if lat else None,
            "server_p50_s": pct(server, 0.5), "server_p95_s": pct(server, 0.95),
            "run_p50_s": pct(run, 0.5), "run_p95_s": pct(run, 0.95), "http_429": stats["429"],
            "errors": stats["errors"][:10]}


# --- modes ------------------------------------------------------------------------------------------------------
def cpu_mode(opts, report: dict, out: Path) -> None:
    url = start_serve(num_cpus=2)
    root = tempfile.mkdtemp(prefix="bench-serve-")
    args = {"model": "tiny:wan", "device": "cpu", "threads": 1, "replica_cpus": 0.5, "storage": root,
            "max_queued_jobs": opts.max_queued, "max_replicas": opts.replicas, "min_replicas": opts.replicas}
    report["setup"] = {"app_args": args, "ready_s": round(deploy(args), 2)}
    body = {"prompt": "a red circle moving left", "num_inference_steps": opts.steps}
    run_job(url, body, requests.Session(), {"429": 0, "errors": []})  # warm-up (not counted)
    report["load_test"] = {"request": body, "poll_s": POLL_S[0], **load_test(url, body, opts.jobs, opts.concurrency)}
    write(report, out)


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _adapter_set(opts, directory: str) -> str:
    """A random rank-32 adapter set for the real-size transformer (compute does not depend on its values)."""
    from lbdist import Schedule
    from lbdist.bridge import random_adapter_set
    from lbdist.evaluate.realsize import build_transformer

    if not Path(directory, "lbdist_adapters.json").is_file():
        transformer = build_transformer(opts.model, device=opts.device)
        random_adapter_set(transformer, Schedule.parse(opts.schedule, opts.steps)).save(directory)
        del transformer
        _free(opts.device)
    return directory


def gpu_app_args(opts, root: str, sp: int, replicas: int) -> dict:
    cpu = opts.device == "cpu"  # the CPU smoke test of this mode (gloo ranks, fractional CPUs)
    return {"model": opts.model, "factory": "lbdist.evaluate.realsize:realsize_pipeline",
            "factory_kwargs": {"name": opts.model, "device": opts.device}, "device": opts.device, "sp_degree": sp,
            "min_replicas": replicas, "max_replicas": replicas, "storage": f"{root}/jobs",
            "adapters": {"set": _adapter_set(opts, f"{root}/adapters")}, "max_queued_jobs": 16,
            "probe_interval_s": 3600, "lease_s": 600, "replica_cpus": 0.2 if cpu else 1.0,
            **({"threads": 1, "worker": {"cpus_per_worker": 0.5}} if cpu else {})}


def gpu_body(opts) -> dict:
    return {"prompt": "a red circle moves left", "num_inference_steps": opts.steps, "schedule": opts.schedule,
            "adapters": "set"}


def direct_runs(opts, root: str) -> list[dict]:
    """The job without Serve: `Generator.generate` plus writing the mp4 (what a Serve job does too)."""
    from lbdist import GenerationRequest, Generator, GeneratorConfig
    from lbdist.parallel import PipelineFactory

    gen = Generator(PipelineFactory("lbdist.evaluate.realsize:realsize_pipeline",
                                    {"name": opts.model, "device": opts.device}),
                    GeneratorConfig(device=opts.device, adapters={"set": _adapter_set(opts, f"{root}/adapters")},
                                    threads=1 if opts.device == "cpu" else None))
    request = GenerationRequest(**gpu_body(opts))
    runs = []
    for i in range(opts.repeats + 1):  # the first is the warm-up
        t0 = time.perf_counter()
        result = gen.generate(request)
        t1 = time.perf_counter()
        result.save(f"{root}/direct.mp4")
        if i:
            runs.append({"generate_s": t1 - t0, "generate_and_save_s": time.perf_counter() - t0,
                         "calls": result.calls, "timings": result.timings})
    gen.close()
    del gen, result
    _free(opts.device)
    return runs


def overhead_phase(opts, report: dict, out: Path, root: str) -> None:
    """Direct Generator vs the same job through Serve (one replica, one device)."""
    direct = direct_runs(opts, root)
    url = start_serve(num_cpus=None)
    ready = deploy(gpu_app_args(opts, root, sp=1, replicas=1))
    session, stats, body = requests.Session(), {"429": 0, "errors": []}, gpu_body(opts)
    run_job(url, body, session, stats)  # warm-up
    served = [run_job(url, body, session, stats) for _ in range(opts.repeats)]
    d = statistics.median(r["generate_and_save_s"] for r in direct)
    s = statistics.median(r["latency_s"] for r in served if "latency_s" in r)
    report["overhead"] = {"model": opts.model, "request": body, "direct": direct, "served": served,
                          "ready_s": round(ready, 1), "direct_median_s": round(d, 4), "served_median_s": round(s, 4),
                          "overhead_s": round(s - d, 4), "overhead_share": round((s - d) / d, 5),
                          "target_share": 0.02, "met": (s - d) / d <= 0.02, "errors": stats["errors"]}
    write(report, out)
    stop_app()


def burst_phase(opts, report: dict, out: Path, root: str, layout: str) -> None:
    """A burst of `opts.burst` jobs at once on 2 replicas x SP 1 (`replicas`) or 1 replica x SP 2 (`sp`)."""
    url = start_serve(num_cpus=None)
    sp, replicas = (1, 2) if layout == "replicas" else (2, 1)
    ready = deploy(gpu_app_args(opts, root, sp=sp, replicas=replicas))
    body = gpu_body(opts)
    load_test(url, body, replicas, replicas)  # warm-up: one job on each replica
    result = load_test(url, body, opts.burst, opts.burst)
    report.setdefault("burst", {})[f"{replicas}x_sp{sp}"] = {"model": opts.model, "request": body,
                                                            "ready_s": round(ready, 1), **result}
    write(report, out)
    stop_app()


# --- report -----------------------------------------------------------------------------------------------------
def environment(mode: str) -> dict:
    import torch

    from lbdist.evaluate.timing import environment as record

    return {"benchmark": "bench_serve", "mode": mode, **record("ray"), "cpus": os.cpu_count(),
            "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}  # the machine may be shared


def write(report: dict, path: Path) -> None:
    from lbdist.evaluate.timing import write_json

    write_json(path, report, indent=1)


def table(report: dict) -> str:
    rows = []
    if "load_test" in report:
        t = report["load_test"]
        rows.append(f"CPU load test: {t['completed']}/{t['accepted']} completed, lost {t['lost']}, "
                    f"{t['throughput_jobs_s']} jobs/s at concurrency {t['concurrency']}, latency p50 "
                    f"{t['latency_p50_s']} s p95 {t['latency_p95_s']} s, 429s {t['http_429']}")
    if "overhead" in report:
        o = report["overhead"]
        rows.append(f"Serve overhead: direct {o['direct_median_s']} s, served {o['served_median_s']} s, "
                    f"{100 * o['overhead_share']:.2f}% (target <= 2%: {'met' if o['met'] else 'missed'})")
    for layout, b in report.get("burst", {}).items():
        rows.append(f"burst {b['jobs']} jobs on {layout}: {b['throughput_jobs_s']} jobs/s, p50 "
                    f"{b['latency_p50_s']} s, p95 {b['latency_p95_s']} s, lost {b['lost']}")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("cpu", "gpu"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--jobs", type=int, default=200, help="cpu: jobs to submit")
    p.add_argument("--concurrency", type=int, default=8, help="cpu: client threads")
    p.add_argument("--max-queued", type=int, default=16, help="cpu: max_queued_jobs of the app")
    p.add_argument("--replicas", type=int, default=1, help="cpu: generator replicas")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (cpu 8, gpu 50)")
    p.add_argument("--phases", nargs="+", default=["overhead", "replicas", "sp"],
                   choices=("overhead", "replicas", "sp"), help="gpu: phases to run, in order")
    p.add_argument("--model", default="wan-1.3b", help="gpu: a real size of lbdist.evaluate.realsize (wan-1.3b, hunyuan-video)")
    p.add_argument("--schedule", default="6", help="gpu: bridge schedule")
    p.add_argument("--repeats", type=int, default=3, help="gpu overhead: timed jobs each way")
    p.add_argument("--burst", type=int, default=8, help="gpu: jobs per burst")
    p.add_argument("--device", default="cuda", help="gpu mode's device (cpu: a smoke test of this mode)")
    p.add_argument("--poll", type=float, default=None, help="seconds between status polls (cpu 0.1, gpu 0.02)")
    opts = p.parse_args(argv)
    POLL_S[0] = opts.poll or (0.1 if opts.mode == "cpu" else 0.02)
    opts.steps = opts.steps or (8 if opts.mode == "cpu" else 50)
    report = json.loads(opts.out.read_text()) if opts.out.is_file() else {}
    report.update(environment(opts.mode))
    if opts.mode == "cpu":
        cpu_mode(opts, report, opts.out)
    else:
        root = tempfile.mkdtemp(prefix="bench-serve-")
        for phase in opts.phases:
            if phase == "overhead":
                overhead_phase(opts, report, opts.out, root)
            else:
                burst_phase(opts, report, opts.out, root, phase)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write(report, opts.out)
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
