"""The calibration job end to end through `ray job submit`, against a local `ray start --head` cluster.

A tiny Wan pipeline (4 blocks), 2 prompts, 8 steps, schedule periodic 4 (12 bridges over two guidance branches),
2 CPU workers: recording in one sequence-parallel group of 2 (xfuser Ulysses on gloo), training on 2 Ray Train
workers with DeepSpeed ZeRO-2. Checked: the adapter set is produced, loads, and equals the single-process
`lbdist.calibrate.calibrate` with the same seeds within RTOL (relative to each tensor's largest entry; measured
5e-5: the sequence-parallel recording differs from one process by float rounding); a partial shard is found by
its checksum and its prompt recorded again, and a training worker killed mid-run is replaced, and the run ends
with the same adapters as an uninterrupted one; `ray job stop` (SIGTERM)
checkpoints and a resubmission resumes, skipping the recorded prompts and finished bridges (counted in the log).

The head is started once for the module (`ray start --head --block` in its own session, every port chosen free,
`RAY_AUTH_MODE=disabled` for head and client), and stopped by signalling that session's process group only.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")
# DeepSpeed JIT-builds its CPU communication op on first use; a directory of our own keeps builds of other
# torch installs on this machine from invalidating ours (each rebuild takes ~40 s or more).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/lbdist-tests/torch_extensions"))
from lbdist.parallel import xdit  # noqa: E402

pytestmark = pytest.mark.skipif(not xdit.installed("xfuser"), reason="needs the [sp] extra: pip install 'lbdist[sp]'")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROMPTS = ("a red circle moving left", "a blue square moving up")
TRAIN = ["--rank", "4", "--alpha", "8", "--lr", "1e-3", "--eval-every", "5", "--patience", "2"]
SHAPE = ["--height", "32", "--width", "32"]  # 8 tokens: 4 per sequence-parallel rank
RTOL = 1e-3
EXCLUDES = ["lbdist/toy/weights", "tools", ".git", "*.png", "__pycache__"]
HEAD: dict = {}


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(REPO),
               PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_JOB_STOP_WAIT_TIME_S="30",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    gcs, dash, client, nm, om, agent, grpc, rt, metrics = _ports(9)
    temp = Path(f"/tmp/lbd-{os.getpid()}")
    args = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=3", "--num-gpus=0",
            "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--node-manager-port={nm}",
            f"--object-manager-port={om}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={grpc}", f"--runtime-env-agent-port={rt}", f"--metrics-export-port={metrics}",
            f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(tmp_path_factory.mktemp("head") / "head.log", "w")
    proc = subprocess.Popen(args, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    HEAD["process"] = proc
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=_env(),
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert proc.poll() is None, f"ray start exited: {Path(log.name).read_text()[-2000:]}"
            time.sleep(2)
        else:
            pytest.fail(f"the head's job server did not come up: {Path(log.name).read_text()[-2000:]}")
        yield address
    finally:
        _stop_session(proc)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM to the head's own process group (every Ray process it started), SIGKILL after a grace period."""
    pgid = os.getpgid(proc.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _prompts(tmp_path) -> str:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return str(path)


def submit(address: str, args: list[str], wait: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps({"excludes": EXCLUDES})] + (["--no-wait"] if not wait else []) + \
          ["--", "python", "jobs/calibrate_wan.py", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def job_args(tmp_path, run_id: str, epochs: int, *extra) -> list[str]:
    return ["--model", "tiny:wan", "--prompts", _prompts(tmp_path), "--schedule", "4", "--steps", "8",
            "--output", str(tmp_path / "out"), "--run-id", run_id, "--workers", "2", "--epochs", str(epochs),
            *SHAPE, *TRAIN, *extra]


def lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[calibrate")]


def single_process(run_root: Path, epochs: int):
    """The same calibration in this process (`lbdist.calibrate.calibrate`), from the run's own recording settings."""
    from lbdist import Schedule
    from lbdist.calibrate import RecordConfig, TrainConfig, calibrate
    from lbdist.generation.loading import load_pipeline

    manifest = json.loads((run_root / "pairs" / "manifest.json").read_text())
    pipe = load_pipeline("tiny:wan", "cpu", "float32").pipe
    pipe.set_progress_bar_config(disable=True)
    train = TrainConfig(recipe="paper", rank=4, alpha=8.0, lr=1e-3, max_epochs=epochs, eval_every=5, patience=2,
                        refit=False)
    record = RecordConfig(tuple(manifest["prompts"]), tuple(manifest["seeds"]), manifest["call_kwargs"])
    return calibrate(pipe, Schedule.from_dict(manifest["schedule"]), record, run_root.parent / "single", train,
                     progress=False)


def assert_close_sets(a, b, rtol: float = RTOL) -> float:
    assert sorted(a.weights) == sorted(b.weights)
    worst = 0.0
    for key, state in a.weights.items():
        for name, value in state.items():
            other = b.weights[key][name]
            worst = max(worst, ((value - other).abs().max() / value.abs().max().clamp_min(1e-12)).item())
    assert worst <= rtol, f"largest relative difference {worst:.2e} > {rtol}"
    return worst


EPOCHS = 30


@pytest.fixture(scope="module")
def reference(head, tmp_path_factory):
    """An uninterrupted run (the job end to end), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("reference")
    done = submit(head, job_args(tmp, "ref", EPOCHS))
    print("\n".join(lines(done.stdout)))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return tmp / "out" / "ref", lines(done.stdout)


def test_job_end_to_end_matches_single_process(reference):
    from lbdist import AdapterSet, Generator

    run, out = reference
    assert any(" record | prompts 2/2 done" in line for line in out), out
    assert any(re.search(r" train \| bridges 12/12 done", line) for line in out), out
    assert out[-1].split(" | ")[0].endswith(" done") and "12 adapters in" in out[-1], out
    adapters = AdapterSet.load(run / "adapters")
    assert adapters.extra["distributed"]["train_workers"] == 2 and len(adapters.weights) == 12
    worst = assert_close_sets(adapters, single_process(run, EPOCHS))
    print(f"distributed vs single-process: largest relative difference {worst:.2e}")
    result = Generator("tiny:wan").generate("a green triangle", num_inference_steps=8, schedule="4", height=32,
                                            width=32, adapters=str(run / "adapters"))
    assert result.calls["calibrated"] > 0


def _reuse_recording(reference_run: Path, tmp_path, run_id: str) -> None:
    """Start a run with the reference's recorded pairs (same settings), as a resubmitted run would find them."""
    shutil.copytree(reference_run / "pairs", tmp_path / "out" / run_id / "pairs")


def _job_id(output: str) -> str:
    return re.search(r"Job '([^']+)' submitted successfully", output).group(1)


def _committed(group_dir: Path) -> bool:
    """Whether Ray Train has committed a checkpoint of this trainer (every rank reported it)."""
    snapshot = group_dir / "checkpoint_manager_snapshot.json"
    try:
        return bool(json.loads(snapshot.read_text()).get("latest_checkpoint_result"))
    except (OSError, ValueError):
        return False


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _client(head: str):
    from ray.job_submission import JobSubmissionClient

    os.environ["RAY_AUTH_MODE"] = "disabled"  # as on the head (STACK.md: head and client must agree)
    return JobSubmissionClient(head)


def _status(head: str, job: str) -> str:
    return str(_client(head).get_job_status(job).value)


def _logs(head: str, job: str) -> list[str]:
    return lines(_client(head).get_job_logs(job))


def _train_worker_pids(head_process) -> list[int]:
    """Live Ray Train workers among the processes of this test's own head (its descendants)."""
    import psutil

    found = []
    for proc in psutil.Process(head_process.pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            pass
    return sorted(found)


@pytest.mark.slow
def test_killed_training_worker_is_replaced_and_gives_the_same_adapters(head, reference, tmp_path):
    from lbdist import AdapterSet

    _reuse_recording(reference[0], tmp_path, "kill")
    shard = tmp_path / "out" / "kill" / "pairs" / "step005_uncond" / "prompt0001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])  # a partial shard: prompt 1 must be recorded again
    job = _job_id(submit(head, job_args(tmp_path, "kill", EPOCHS), wait=False).stdout)
    checkpoints = tmp_path / "out" / "kill" / "train" / "group00"
    _wait_for(lambda: _committed(checkpoints), 300, "the first committed checkpoint")
    pids = _wait_for(lambda: _train_worker_pids(HEAD["process"]), 60, "the training workers")
    os.kill(pids[-1], signal.SIGKILL)  # a worker of this test's own cluster, by its pid
    print(f"killed training worker {pids[-1]} of {pids} after {sorted(p.name for p in checkpoints.glob('checkpoint_*'))}")
    _wait_for(lambda: _status(head, job) in ("SUCCEEDED", "FAILED", "STOPPED"), 400, "the job to end")
    out = _logs(head, job)
    print("\n".join(out))
    assert _status(head, job) == "SUCCEEDED", out
    assert any("1/2 prompts already recorded (verified full, skipped) | 1 with missing or corrupted shards, "
               "recorded again: prompts [1]" in line for line in out), out
    assert any(re.search(r"group 0 resumed from its checkpoint at epoch \d+", line) for line in out), out
    worst = assert_close_sets(AdapterSet.load(tmp_path / "out" / "kill" / "adapters"),
                              AdapterSet.load(reference[0] / "adapters"))
    print(f"killed-and-resumed vs uninterrupted: largest relative difference {worst:.2e}")


@pytest.mark.slow
def test_sigterm_checkpoints_and_a_resubmission_resumes(head, reference, tmp_path):
    from lbdist import AdapterSet

    _reuse_recording(reference[0], tmp_path, "term")
    # 2 groups of 6 bridges trained one after the other; long enough that the stop lands inside the second
    args = job_args(tmp_path, "term", 4 * EPOCHS, "--max-bridges-per-trainer", "6", "--max-concurrent-trainers", "1")
    job = _job_id(submit(head, args, wait=False).stdout)
    second = tmp_path / "out" / "term" / "train" / "group01"
    _wait_for(lambda: _committed(second), 400, "the second group's first committed checkpoint")
    _client(head).stop_job(job)  # what `ray job stop` does: the job's processes get SIGTERM
    _wait_for(lambda: _status(head, job) in ("STOPPED", "FAILED", "SUCCEEDED"), 120, "the job to stop")
    out = _logs(head, job)
    print("\n".join(out))
    assert any(" stopped | stopped while training: 6 of 12 bridges finished" in line for line in out), out
    again = submit(head, args)
    resumed = lines(again.stdout)
    print("\n".join(resumed))
    assert again.returncode == 0, again.stdout[-3000:]
    assert any("2/2 prompts already recorded" in line for line in resumed), resumed
    assert any("12 bridges in 2 group(s) | 6 finished before (skipped) | 1 trainer(s)" in line for line in resumed)
    assert any(re.search(r"group 1 resumed from its checkpoint at epoch \d+", line) for line in resumed), resumed
    assert "skipped 2 prompts, 6 bridges already done" in resumed[-1], resumed
    adapters = AdapterSet.load(tmp_path / "out" / "term" / "adapters")
    assert len(adapters.weights) == 12
    assert {info["epochs_run"] for info in adapters.extra["training"].values()} <= set(range(1, 4 * EPOCHS + 1))
