"""Batch rendering without Ray: prompts files (txt, jsonl, bad lines, stable ids), the manifest (merge, skip,
atomic rewrite), the layout rule, the CLI's argument checks, and one item rendered by a local Generator."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lbdist import storage
from lbdist.cli import main
from lbdist.cli.render import parse_actors, parse_adapter_sets
from lbdist.render import Manifest, ModelFootprint, RenderConfig, choose_layout, parse_prompts, read_prompts
from lbdist.render.batch import RenderReport, plan
from lbdist.render.prompts import LineError, RenderItem


# --- prompts files ----------------------------------------------------------------------------------------------
def test_txt_skips_comments_and_blank_lines_and_keeps_line_numbers():
    parsed = parse_prompts("# header\n\na red circle\n  # indented comment\na blue square  \n", jsonl=False,
                           defaults={"num_inference_steps": 4, "seed": 3})
    assert [(i.line, i.request.prompt) for i in parsed.items] == [(3, "a red circle"), (5, "a blue square")]
    assert all(i.request.num_inference_steps == 4 and i.request.seed == 3 for i in parsed.items)
    assert not parsed.errors


def test_jsonl_overrides_and_short_names():
    text = '{"prompt": "a red circle", "seed": 7, "steps": 30, "guidance": 2, "frames": 9, "schedule": "5"}\n'
    item = parse_prompts(text, jsonl=True, defaults={"num_inference_steps": 10, "seed": 1}).items[0]
    r = item.request
    assert (r.seed, r.num_inference_steps, r.guidance_scale, r.num_frames, r.schedule) == (7, 30, 2.0, 9, "5")


def test_bad_lines_are_reported_by_number_and_the_rest_is_kept():
    text = "\n".join(['{"prompt": "ok one"}', '{"prompt": "broken"', '{"prompt": "x", "colour": "red"}',
                      '{"prompt": "x", "seed": -1}', '["not", "an", "object"]', '{"seed": 3}',
                      '{"prompt": "x", "id": "../escape"}', '{"prompt": "ok two", "steps": 4}'])
    parsed = parse_prompts(text, jsonl=True)
    assert [i.line for i in parsed.items] == [1, 8]
    messages = {e.line: e.message for e in parsed.errors}
    assert sorted(messages) == [2, 3, 4, 5, 6, 7]
    assert "not valid JSON" in messages[2]
    assert "unknown keys ['colour']" in messages[3] and "allowed:" in messages[3]
    assert "seed must be an integer" in messages[4]
    assert "object" in messages[5] and "prompt" in messages[6] and "'../escape'" in messages[7]
    assert str(LineError(3, "x")) == "line 3: x"


def test_ids_are_stable_across_runs_and_line_order_and_depend_on_request_and_model():
    a = parse_prompts("a red circle\na blue square\n", jsonl=False, model_key="tiny:wan")
    b = parse_prompts("# moved\na blue square\n\na red circle\n", jsonl=False, model_key="tiny:wan")
    assert {i.request.prompt: i.id for i in a.items} == {i.request.prompt: i.id for i in b.items}
    other_model = parse_prompts("a red circle\n", jsonl=False, model_key="tiny:flux").items[0].id
    other_seed = parse_prompts("a red circle\n", jsonl=False, defaults={"seed": 1}, model_key="tiny:wan").items[0].id
    assert len({a.items[0].id, other_model, other_seed}) == 3


def test_repeated_request_renders_once_and_user_ids_must_be_unique():
    parsed = parse_prompts('{"prompt": "a"}\n{"prompt": "a"}\n{"prompt": "b", "id": "s1"}\n{"prompt": "c", "id": "s1"}\n',
                           jsonl=True)
    assert [i.line for i in parsed.items] == [1, 3]
    assert "repeats line 1" in parsed.repeats[0].message and parsed.repeats[0].line == 2
    assert parsed.errors[0].line == 4 and "already used by line 3" in parsed.errors[0].message


def test_bad_defaults_fail_once_naming_the_field():
    with pytest.raises(ValueError, match="num_inference_steps"):
        parse_prompts("a\n", jsonl=False, defaults={"num_inference_steps": 0})


def test_read_prompts_from_a_uri_and_refuses_missing_or_empty_files(tmp_path):
    storage.write_text("memory://render-units/p.jsonl", '{"prompt": "a red circle"}\n')
    assert read_prompts("memory://render-units/p.jsonl").items[0].request.prompt == "a red circle"
    with pytest.raises(ValueError, match="does not exist"):
        read_prompts(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(str(tmp_path / "empty.txt"))


def test_item_rows_round_trip():
    item = parse_prompts('{"prompt": "a", "id": "x1", "seed": 5}\n', jsonl=True).items[0]
    assert RenderItem.from_row(item.to_row()["item"]) == item


# --- manifest ---------------------------------------------------------------------------------------------------
def _record(item_id, line, out, status="ok", write_output=True):
    output = storage.join(out, f"{item_id}.mp4")
    if write_output:
        storage.write_bytes(output, b"video")
    return {"id": item_id, "line": line, "prompt": "p", "seed": 0, "output": output, "status": status,
            "error": None if status == "ok" else "ValueError: bad", "timings": {}, "settings": {}}


def test_manifest_rewrites_whole_sorted_and_merges_records_of_a_dead_driver(tmp_path):
    from lbdist.render.manifest import write_record

    out = str(tmp_path)
    manifest = Manifest.load(out)
    manifest.add(_record("b", 2, out))
    manifest.add(_record("a", 1, out, status="error"))
    manifest.set_invalid([LineError(3, "not valid JSON")])
    assert manifest.flush()
    lines = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in lines] == [(1, "error"), (2, "ok"), (3, "invalid")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    write_record(out, _record("c", 4, out))  # an actor finished "c", then the driver died before flushing
    write_record(out, _record("a", 1, out))  # and "a" was rendered again successfully
    again = Manifest.load(out)
    assert again.finished("a") and again.finished("b") and again.finished("c")
    assert again.counts() == {"ok": 3, "error": 0, "invalid": 0}


def test_an_item_whose_output_vanished_is_not_finished(tmp_path):
    manifest = Manifest(str(tmp_path))
    manifest.add(_record("a", 1, str(tmp_path), write_output=False))
    assert not manifest.finished("a")


def test_plan_skips_finished_items_and_retries_failed_ones_unless_told(tmp_path):
    out = str(tmp_path)
    parsed = parse_prompts("one\ntwo\nthree\n", jsonl=False)
    ids = [i.id for i in parsed.items]
    manifest = Manifest(out)
    manifest.add(_record(ids[0], 9, out))
    manifest.add(_record(ids[1], 2, out, status="error"))
    report = RenderReport()
    assert [i.id for i in plan(parsed, manifest, True, report)] == ids[1:] and report.skipped == 1
    assert manifest.records[ids[0]]["line"] == 1  # moved to its line in this file
    report = RenderReport()
    assert [i.id for i in plan(parsed, manifest, False, report)] == ids[2:] and report.skipped_failed == 1


# --- config, CLI ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [({"actors": (2, 1)}, "1 <= min <= max"), ({"actors": 2}, "actors"),
                                             ({"sp_degree": 0}, "sp_degree"), ({"cpus_per_actor": 0}, "cpus_per_actor")])
def test_render_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RenderConfig(**kwargs)


def test_generator_config_of_cpu_sp_actors_uses_gloo_ranks():
    config = RenderConfig(sp_degree=2, worker={"call_timeout_s": 60}).generator_config(gpus=False)
    assert config.sp_degree == 2 and config.worker["backend"] == "gloo" and config.worker["gpus_per_worker"] == 0
    assert RenderConfig().generator_config(gpus=False).device == "cpu"


def test_cli_argument_parsing():
    assert parse_actors("auto") is None and parse_actors("3") == (3, 3) and parse_actors("1:4") == (1, 4)
    for bad in ("0", "4:2", "x", "1:"):
        with pytest.raises(ValueError, match="--actors"):
            parse_actors(bad)
    assert parse_adapter_sets(["n6=adapters/wan-n6"]) == {"n6": "adapters/wan-n6"}
    with pytest.raises(ValueError, match="NAME=REF"):
        parse_adapter_sets(["n6"])


def test_cli_bad_arguments_exit_2_before_ray_starts(tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    assert main(["render", str(prompts), "--out", str(tmp_path / "o"), "--model", "tiny:wan", "--actors", "3:1"]) == 2
    assert "--actors '3:1'" in capsys.readouterr().err
    assert main(["render", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"), "--model", "tiny:wan"]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- the layout rule --------------------------------------------------------------------------------------------
WAN_13B = ModelFootprint(heads=12, tokens=32760, weights_gib=5.7, activations_gib=9.0, seconds_per_item=60.0)


def test_layout_prefers_data_parallel_sp1_actors_when_the_model_fits_one_gpu():
    layout = choose_layout(gpus=[8, 8], model=WAN_13B, items=500, gpu_memory_gib=80)
    assert (layout.actors, layout.sp_degree) == (16, 1) and "fits one GPU" in layout.reason
    assert layout.estimates[1]["items_per_hour"] > layout.estimates[2]["items_per_hour"]


def test_layout_uses_sp_when_memory_requires_it():
    big = ModelFootprint(heads=40, tokens=32760, weights_gib=30, activations_gib=80)
    layout = choose_layout(gpus=8, model=big, items=100, gpu_memory_gib=80)
    assert (layout.actors, layout.sp_degree) == (4, 2) and "memory needs SP 2" in layout.reason
    with pytest.raises(ValueError, match="does not fit"):
        choose_layout(gpus=8, model=ModelFootprint(heads=40, tokens=32760, weights_gib=79), items=1, gpu_memory_gib=80)


def test_layout_uses_idle_gpus_for_few_items_and_meets_latency_targets():
    assert choose_layout(gpus=2, model=WAN_13B, items=1, gpu_memory_gib=80).sp_degree == 2
    latency = choose_layout(gpus=8, model=WAN_13B, items=100, gpu_memory_gib=80, latency_s=20)
    assert (latency.actors, latency.sp_degree) == (2, 4) and "20 s per item" in latency.reason


def test_layout_respects_heads_tokens_and_node_size():
    odd_heads = ModelFootprint(heads=3, tokens=32760, weights_gib=1)
    assert choose_layout(gpus=2, model=odd_heads, items=1, gpu_memory_gib=80).sp_degree == 1
    short = ModelFootprint(heads=12, tokens=1500, weights_gib=1)
    assert choose_layout(gpus=2, model=short, items=1, gpu_memory_gib=80).sp_degree == 1
    assert choose_layout(gpus=[1, 1], model=WAN_13B, items=1, gpu_memory_gib=80).sp_degree == 1  # one GPU per node
    with pytest.raises(ValueError, match="gpus"):
        choose_layout(gpus=0, model=WAN_13B, items=1, gpu_memory_gib=80)


# --- one item, in this process --------------------------------------------------------------------------------
def test_render_item_writes_output_and_record_and_records_failures(tmp_path):
    from lbdist import Generator, GeneratorConfig
    from lbdist.render.actor import render_item

    out = str(tmp_path)
    generator = Generator("tiny:wan", GeneratorConfig(device="cpu"))
    items = parse_prompts('{"prompt": "a red circle", "steps": 2, "output_format": "np"}\n'
                          '{"prompt": "a red circle", "steps": 2, "num_frames": 6}\n', jsonl=True).items
    ok = render_item(generator, items[0], out, "here")
    assert ok["status"] == "ok" and ok["output"].endswith(".npy") and ok["settings"]["num_inference_steps"] == 2
    assert np.load(ok["output"]).shape == (5, 16, 16, 3)
    assert json.loads((tmp_path / "records" / f"{items[0].id}.json").read_text())["status"] == "ok"
    bad = render_item(generator, items[1], out, "here")
    assert bad["status"] == "error" and "num_frames=6" in bad["error"] and bad["output"] is None


def test_job_script_refuses_bad_arguments_before_ray_starts(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "jobs" / "render_batch.py"
    spec = importlib.util.spec_from_file_location("render_batch_job", path)
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.__doc__.lstrip().splitlines()[2].strip().startswith("ray job submit --working-dir . -- python "
                                                                    "jobs/render_batch.py")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    assert job.main([str(prompts), "--out", str(tmp_path / "o"), "--model", "tiny:wan", "--sp-degree", "0"]) == 2
    assert "sp_degree must be an integer >= 1, got 0" in capsys.readouterr().err
    import ray

    assert not ray.is_initialized()
