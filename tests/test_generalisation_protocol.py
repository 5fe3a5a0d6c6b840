"""The held-out protocol of issue 17 (lbdist.evaluate.generalisation) on a tiny real HunyuanVideo pipeline: disjoint
splits, paired differences, and the peer method run with fresh state and removed afterwards."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lbdist.evaluate.generalisation import (GeneralisationConfig, Sampler, paired_difference, run_generalisation,
                                            split, summary)

torch.set_num_threads(1)


def test_splits_are_disjoint_in_prompts_and_seeds():
    parts = split("video", GeneralisationConfig("hunyuan_video"))
    evaluation = {p for p, _ in parts.evaluation}
    assert len(evaluation) == 16 and len(parts.evaluation) == 32
    assert not evaluation & set(parts.calibration) and not evaluation & set(parts.validation)
    assert not set(parts.calibration) & set(parts.validation)
    seeds = [s for _, s in parts.evaluation]
    assert len(set(seeds)) == len(seeds) and not set(seeds) & set(parts.calibration_seeds + parts.validation_seeds)


def test_paired_difference_sides_and_mismatch():
    base = [{"prompt": f"p{i}", "seed": s, "rel_l2": 0.2, "psnr": 30.0} for i in range(6) for s in (0, 1)]
    better = [dict(r, rel_l2=r["rel_l2"] - 0.05, psnr=r["psnr"] + 2 + 0.1 * (i % 3)) for i, r in enumerate(base)]
    diff = paired_difference(better, base, n=500)
    assert diff["rel_l2"]["better"] and diff["psnr"]["better"]
    assert diff["rel_l2"]["mean"] == pytest.approx(-0.05) and diff["psnr"]["lo"] > 0
    assert not paired_difference(base, better, n=500)["psnr"]["better"]
    with pytest.raises(ValueError, match="same"):
        paired_difference(better[:-1], base, n=500)
    s = summary(base, n=200)
    assert s["psnr"]["lo"] == s["psnr"]["hi"] == pytest.approx(30.0)


def test_taylorseer_lite_runs_with_fresh_state_and_leaves_the_pipeline_as_it_was():
    config = GeneralisationConfig("hunyuan_video", intervals=(3,), evaluation_prompts=2, evaluation_seeds=1,
                                  methods=("uncalibrated", "taylorseer_lite"), bootstrap=200,
                                  model="tiny:hunyuan_video")
    report = run_generalisation(config, log=lambda row: None)
    entry = report["intervals"]["3"]
    peer, bridge = entry["rows"]["taylorseer_lite"], entry["rows"]["uncalibrated"]
    assert [(r["prompt"], r["seed"]) for r in peer] == [(r["prompt"], r["seed"]) for r in bridge]
    assert all(r["rel_l2"] > 0 for r in peer)  # the peer skipped work: not full compute
    assert [r["rel_l2"] for r in peer] != [r["rel_l2"] for r in bridge]
    assert entry["paired"] == {}  # nothing calibrated to pair against

    sampler = Sampler("tiny:hunyuan_video")
    prompt, seed = report["evaluation_samples"][0]
    frames, latents = sampler.generate(prompt, seed)
    from lbdist.bridge import Schedule

    schedule = Schedule.periodic(sampler.steps, 3)
    first = sampler.generate(prompt, seed, schedule, peer=("taylorseer_lite", 3))
    again = sampler.generate(prompt, seed, schedule, peer=("taylorseer_lite", 3))
    torch.testing.assert_close(first[1], again[1])  # fresh state per generation: the same result twice
    after_frames, after_latents = sampler.generate(prompt, seed)  # removed: full compute is full compute again
    torch.testing.assert_close(after_latents, latents)
    np.testing.assert_array_equal(after_frames, frames)
