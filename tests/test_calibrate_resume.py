"""Calibration resumes only with the settings it started with; `restart=True` starts over.

Tiny FLUX pipeline, 6 steps at N=3 (4 bridges), 2 prompts, a few epochs: seconds on the CPU.
"""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lbdist.bridge import AdapterSet, Schedule
from lbdist.bridge.adapter_files import MANIFEST
from lbdist.calibrate import RecordConfig, SettingsChanged, TrainConfig, calibrate, record_pairs, train_adapters
from lbdist.calibrate.store import INDEX, read_manifest
from tests.conftest import make_pipe

SCHEDULE = Schedule.periodic(6, 3)
PROMPTS = ("a red circle moving left", "a blue square moving up")
CONFIG = TrainConfig(rank=2, alpha=4.0, lr=1e-3, max_epochs=4, eval_every=2, patience=2)


def _call():
    from lbdist.toy.build import call_defaults

    return call_defaults("flux", "tiny")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    pipe = make_pipe("flux")
    pairs = tmp_path_factory.mktemp("resume") / "pairs"
    record_pairs(pipe, SCHEDULE, RecordConfig(prompts=PROMPTS, call_kwargs=_call()), pairs, progress=False)
    return pipe, pairs


def _settings(out) -> dict:
    manifest = json.loads((out / MANIFEST).read_text())
    return {key: info["settings"] for key, info in manifest["training"].items()}


def test_each_bridge_records_the_settings_it_was_trained_with(recorded, tmp_path):
    pipe, pairs = recorded
    train_adapters(pipe.transformer, pairs, tmp_path / "a", CONFIG, progress=False)
    settings = _settings(tmp_path / "a")
    assert sorted(settings) == ["1_cond", "2_cond", "4_cond", "5_cond"]
    for s in settings.values():
        assert (s["lr"], s["max_epochs"], s["rank"], s["alpha"], s["seed"]) == (1e-3, 4, 2, 4.0, 0)
        assert s["prompts"] == list(PROMPTS) and s["seeds"] == [0, 1] and s["call_kwargs"] == _call()


def test_a_rerun_with_other_training_settings_is_refused_listing_each_difference(recorded, tmp_path):
    pipe, pairs = recorded
    out = tmp_path / "a"
    first = train_adapters(pipe.transformer, pairs, out, CONFIG, progress=False, stop_after=2)
    assert len(first.weights) == 2
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    changed = replace(CONFIG, lr=2e-3, max_epochs=6, patience=3)
    with pytest.raises(SettingsChanged) as info:
        train_adapters(pipe.transformer, pairs, out, changed, progress=False)
    assert info.value.differences == ["lr: 0.001 -> 0.002", "max_epochs: 4 -> 6", "patience: 2 -> 3"]
    assert str(info.value) == (f"{out} holds an adapter set (2 bridges) trained with other settings: "
                               "lr: 0.001 -> 0.002; max_epochs: 4 -> 6; patience: 2 -> 3. Pass restart=True "
                               f"(CLI --restart) to start over in {out}, or use another directory")
    assert isinstance(info.value, ValueError)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched
    with pytest.raises(SettingsChanged, match=r"lora_rank: 2 -> 4; .*rank: 2 -> 4"):
        train_adapters(pipe.transformer, pairs, out, replace(CONFIG, rank=4), progress=False)
    with pytest.raises(SettingsChanged, match=r"^.*: holdout_prompts: 0 -> 1; seed: 0 -> 7\. Pass"):
        train_adapters(pipe.transformer, pairs, out, replace(CONFIG, holdout_prompts=1, seed=7), progress=False)
    with pytest.raises(SettingsChanged, match=r"eval_every: 2 -> 4"):
        train_adapters(pipe.transformer, pairs, out, replace(CONFIG, eval_every=4), progress=False)
    resumed = train_adapters(pipe.transformer, pairs, out, CONFIG, progress=False)  # same settings: resumes
    assert len(resumed.weights) == 4


def test_restart_trains_every_bridge_again_with_the_new_settings(recorded, tmp_path):
    pipe, pairs = recorded
    out = tmp_path / "a"
    train_adapters(pipe.transformer, pairs, out, CONFIG, progress=False, stop_after=3)
    (out / "notes.txt").write_text("mine")  # not calibration's: restart leaves it alone
    changed = replace(CONFIG, lr=2e-3)
    again = train_adapters(pipe.transformer, pairs, out, changed, progress=False, restart=True)
    fresh = train_adapters(pipe.transformer, pairs, tmp_path / "b", changed, progress=False)
    assert sorted(again.weights) == sorted(fresh.weights) and len(again.weights) == 4
    for key, state in fresh.weights.items():
        assert all(torch.equal(state[k], again.weights[key][k]) for k in state), key
    assert all(s["lr"] == 2e-3 for s in _settings(out).values())
    assert json.loads((out / MANIFEST).read_text())["train_config"]["lr"] == 2e-3
    assert (out / "notes.txt").read_text() == "mine"
    assert len(AdapterSet.load(out).weights) == 4


def test_a_set_without_recorded_settings_is_not_resumed_blindly(recorded, tmp_path):
    pipe, pairs = recorded
    out = tmp_path / "a"
    train_adapters(pipe.transformer, pairs, out, CONFIG, progress=False, stop_after=1)
    manifest = json.loads((out / MANIFEST).read_text())
    for info in manifest["training"].values():
        del info["settings"]  # as written before settings were recorded per bridge
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SettingsChanged, match=r"lr: \(not recorded\) -> 0.001"):
        train_adapters(pipe.transformer, pairs, out, CONFIG, progress=False)


def test_a_rerecording_with_other_settings_is_refused_then_restarted(tmp_path):
    pipe = make_pipe("flux")
    pairs = tmp_path / "pairs"
    record = RecordConfig(prompts=PROMPTS[:1], call_kwargs=_call())
    record_pairs(pipe, SCHEDULE, record, pairs, progress=False)
    other = RecordConfig(prompts=PROMPTS[:1], seeds=(5,), call_kwargs={**_call(), "guidance_scale": 2.0})
    with pytest.raises(SettingsChanged) as info:
        record_pairs(pipe, SCHEDULE, other, pairs, progress=False)
    assert info.value.differences == ["seeds: [0] -> [5]",
                                      f"call_kwargs: {json.dumps(_call())} -> "
                                      f"{json.dumps({**_call(), 'guidance_scale': 2.0})}"]
    assert str(info.value).startswith(f"{pairs} holds pairs recorded with other settings: seeds: [0] -> [5]")
    with pytest.raises(SettingsChanged, match=r"schedule: periodic:3 over 6 steps -> periodic:2 over 6 steps"):
        record_pairs(pipe, Schedule.periodic(6, 2), record, pairs, progress=False)
    record_pairs(pipe, SCHEDULE, other, pairs, progress=False, restart=True)
    manifest = read_manifest(pairs)
    assert manifest["seeds"] == [5] and manifest["completed_prompts"] == [0]
    assert len((pairs / INDEX).read_text().splitlines()) == len(SCHEDULE.bridged_steps)


def test_calibrate_restart_keeps_identical_pairs_and_retrains(tmp_path):
    pipe = make_pipe("flux")
    out, pairs = tmp_path / "set", tmp_path / "set-pairs"
    record = RecordConfig(prompts=PROMPTS[:1], call_kwargs=_call())
    calibrate(pipe, SCHEDULE, record, out, CONFIG, progress=False)
    index = (pairs / INDEX).stat().st_mtime_ns
    with pytest.raises(SettingsChanged, match=r"max_epochs: 4 -> 2"):
        calibrate(pipe, SCHEDULE, record, out, replace(CONFIG, max_epochs=2), progress=False)
    adapters = calibrate(pipe, SCHEDULE, record, out, replace(CONFIG, max_epochs=2), progress=False, restart=True)
    assert (pairs / INDEX).stat().st_mtime_ns == index  # same recording settings: pairs kept
    assert all(info["settings"]["max_epochs"] == 2 for info in adapters.extra["training"].values())
    # the pairs re-recorded with other prompts: the set trained on the old ones is not resumed
    new_record = RecordConfig(prompts=PROMPTS[1:], call_kwargs=_call())
    record_pairs(pipe, SCHEDULE, new_record, pairs, progress=False, restart=True)
    with pytest.raises(SettingsChanged, match=r"prompts: \[\"a red circle moving left\"\] -> "
                                              r"\[\"a blue square moving up\"\]"):
        train_adapters(pipe.transformer, pairs, out, replace(CONFIG, max_epochs=2), progress=False)
