"""Batch rendering on a local Ray cluster (loopback, CPU actors, tiny Wan): Ray Data `map_batches` over an actor
pool of Generators.

12 prompts on a pool of 2 actors write every output and a complete manifest; a rerun renders nothing; an actor
killed mid-batch is replaced and no item goes missing or is recorded twice; bad lines of a jsonl file are
reported by number while the rest renders with its overrides; an SP-2 actor renders inside its own placement
group and gives it back. One Ray instance serves the module and is shut down at its end.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from lbdist.cli import main
from lbdist.render import RenderConfig, render

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data", reason="batch rendering needs Ray Data: pip install 'lbdist[render]'")

PROMPTS = [f"a {colour} {shape} moving {way}" for colour, shape, way in
           zip("red green blue yellow red green blue yellow red green blue yellow".split(),
               "circle square triangle circle square triangle circle square triangle circle square triangle".split(),
               "left right up down left right up down left right up down".split())]


def config(**overrides) -> RenderConfig:
    base = dict(actors=(2, 2), gpus=False, defaults={"num_inference_steps": 4}, manifest_every_s=0, log_every_s=0)
    return RenderConfig(**{**base, **overrides})


def manifest_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def twelve(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("twelve")
    prompts = root / "prompts.txt"
    prompts.write_text("# twelve prompts\n" + "\n".join(PROMPTS) + "\n")
    report = render(str(prompts), str(root / "out"), "tiny:wan", config())
    return prompts, root / "out", report


def test_twelve_prompts_on_two_actors_write_every_output_and_a_complete_manifest(twelve):
    _, out, report = twelve
    assert (report.rendered, report.failed, report.skipped, report.duplicates) == (12, 0, 0, 0)
    records = manifest_of(out)
    assert [r["line"] for r in records] == list(range(2, 14))
    assert [r["prompt"] for r in records] == PROMPTS and len({r["id"] for r in records}) == 12
    for r in records:
        assert r["status"] == "ok" and r["error"] is None and r["seed"] == 0
        assert r["output"] == str(out / f"{r['id']}.mp4") and Path(r["output"]).stat().st_size > 0
        assert r["settings"]["num_inference_steps"] == 4 and r["timings"]["total"] > 0
        assert (out / "records" / f"{r['id']}.json").is_file()
    assert len({r["worker"] for r in records}) == 2  # both actors of the pool rendered
    assert report.layout == {"actors": [2, 2], "sp_degree": 1, "gpus": False}


def test_rerun_renders_nothing_and_counts_the_skipped_items(twelve):
    prompts, out, _ = twelve
    before = {r["id"]: r["finished"] for r in manifest_of(out)}
    again = render(str(prompts), str(out), "tiny:wan", config())
    assert (again.rendered, again.skipped, again.failed, again.total) == (0, 12, 0, 12)
    assert again.layout == {}  # no actor was started
    assert {r["id"]: r["finished"] for r in manifest_of(out)} == before


def test_killed_actor_the_batch_finishes_with_no_item_missing_or_duplicated(cluster, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    killed = []

    def kill_once(record):
        if len(killed) == 0 and record["status"] == "ok":
            pid = int(record["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)  # the actor dies between or in the middle of items
            killed.append(pid)

    report = render(str(prompts), str(tmp_path / "out"), "tiny:wan",
                    config(defaults={"num_inference_steps": 12}), on_record=kill_once)
    assert killed
    records = manifest_of(tmp_path / "out")
    assert sorted(r["prompt"] for r in records) == sorted(PROMPTS)
    assert len(records) == len({r["id"] for r in records}) == 12
    assert all(r["status"] == "ok" and Path(r["output"]).is_file() for r in records)
    assert report.rendered == 12 and report.failed == 0
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".mp4")
    assert outputs == sorted(f"{r['id']}.mp4" for r in records)  # no stray or temporary files


JSONL = "\n".join([
    '{"prompt": "a red circle moving left", "seed": 7, "steps": 3, "height": 32, "width": 32, "num_frames": 9, '
    '"output_format": "gif"}',
    '{"id": "shot-1", "prompt": "a blue square", "output_format": "np", "guidance": 1.5}',
    '{"prompt": "broken json"',
    '# a comment',
    '{"prompt": "a green triangle", "colour": "green"}',
    '{"prompt": "a yellow circle", "num_frames": 6}',
    '{"prompt": "a red square", "seed": -1}',
    'a plain line in a jsonl file',
    '{"prompt": "a yellow square moving up"}',
]) + "\n"


@pytest.fixture(scope="module")
def mixed(cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    prompts = root / "prompts.jsonl"
    prompts.write_text(JSONL)
    logger = logging.getLogger("lbdist.render")
    messages = []
    handler = logging.Handler()
    handler.emit = lambda rec: messages.append(rec.getMessage())
    logger.addHandler(handler)
    try:
        report = render(str(prompts), str(root / "out"), "tiny:wan", config(actors=(1, 1)))
    finally:
        logger.removeHandler(handler)
    return prompts, root / "out", report, messages


def test_bad_lines_are_reported_by_line_number_and_the_rest_renders(mixed):
    prompts, out, report, messages = mixed
    assert report.invalid == 4 and [e.split(":")[0] for e in report.errors] == ["line 3", "line 5", "line 7", "line 8"]
    assert f"{prompts}:5: unknown keys ['colour']" in "\n".join(messages)
    records = {r["line"]: r for r in manifest_of(out)}
    assert sorted(records) == [1, 2, 3, 5, 6, 7, 8, 9]
    assert [records[n]["status"] for n in (3, 5, 7, 8)] == ["invalid"] * 4
    assert "not valid JSON" in records[8]["error"] and "seed" in records[7]["error"]
    assert records[1]["status"] == records[2]["status"] == records[9]["status"] == "ok"
    assert report.rendered == 3 and not report.ok


def test_a_failing_item_is_recorded_and_does_not_stop_the_batch(mixed):
    _, out, report, _ = mixed
    failed = {r["line"]: r for r in manifest_of(out)}[6]
    assert failed["status"] == "error" and "num_frames=6" in failed["error"] and failed["output"] is None
    assert report.failed == 1


def test_jsonl_overrides_are_applied(mixed):
    _, out, _, _ = mixed
    records = {r["line"]: r for r in manifest_of(out)}
    first = records[1]
    assert first["seed"] == 7 and first["output"].endswith(".gif") and Path(first["output"]).is_file()
    assert {k: first["settings"][k] for k in ("height", "width", "num_frames", "num_inference_steps")} == \
        {"height": 32, "width": 32, "num_frames": 9, "num_inference_steps": 3}
    shot = records[2]
    assert shot["id"] == "shot-1" and shot["output"] == str(out / "shot-1.npy")
    assert shot["settings"]["guidance_scale"] == 1.5 and shot["settings"]["num_inference_steps"] == 4  # default kept
    assert np.load(shot["output"]).shape == (5, 16, 16, 3)


def test_cli_renders_and_a_second_run_skips(cluster, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    args = ["render", str(prompts), "--out", str(tmp_path / "out"), "--model", "tiny:wan", "--actors", "1",
            "--steps", "2", "--cpu", "--schedule", "2", "--seed", "5"]
    assert main(args) == 0
    assert "2 rendered, 0 failed" in capsys.readouterr().out
    records = manifest_of(tmp_path / "out")
    assert [(r["seed"], r["settings"]["schedule"]) for r in records] == [(5, "2"), (5, "2")]
    assert main(args) == 0
    assert "0 rendered, 0 failed, 2 skipped" in capsys.readouterr().out


def test_sp2_actor_renders_in_its_own_placement_group_and_gives_it_back(cluster, tmp_path):
    from ray.util.placement_group import placement_group_table

    xdit = pytest.importorskip("lbdist.parallel.xdit")
    if not (xdit.installed("xfuser") and xdit.installed("yunchang")):
        pytest.skip("needs the [sp] extra: pip install 'lbdist[sp]'")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    report = render(str(prompts), str(tmp_path / "out"), "tiny:wan",
                    config(actors=(1, 1), sp_degree=2, worker={"call_timeout_s": 300}))
    assert report.rendered == 2 and report.layout["sp_degree"] == 2
    assert all(Path(r["output"]).is_file() for r in manifest_of(tmp_path / "out"))
    ours = [pg for pg in placement_group_table().values() if pg.get("name", "").startswith("lbdist-render-")]
    assert len(ours) == 1 and ours[0]["state"] == "REMOVED"  # one actor, one group (no orphans), given back
    deadline = time.monotonic() + 30  # Ray's resource view lags removals (and the pool's actors' exit) a little
    while ray.available_resources().get("CPU") != ray.cluster_resources().get("CPU") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU") == ray.cluster_resources().get("CPU")
