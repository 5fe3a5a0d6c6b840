"""`lbdist.Generator` in one process: requests resolved against the model, resident adapter sets switched in
place (an LRU of sets, counted), progress and cancellation at step boundaries, per-stage timings."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lbdist import CacheLimits, GenerationCancelled, GenerationRequest, Generator, GeneratorConfig, Schedule
from lbdist.bridge import random_adapter_set

STEPS = 6


def _sets(tmp_path, seeds=(1, 2)):
    """Two different adapter sets for tiny:wan at N=3 over 6 steps, saved as directories."""
    transformer = Generator("tiny:wan").pipe.transformer
    paths = []
    for seed in seeds:
        path = tmp_path / f"set{seed}"
        random_adapter_set(transformer, Schedule.periodic(STEPS, 3), std=0.1, seed=seed).save(path)
        paths.append(str(path))
    return paths


def _request(adapters=None, **kw):
    return GenerationRequest("a red circle", seed=5, num_inference_steps=STEPS, schedule="3", adapters=adapters, **kw)


def test_two_adapter_sets_alternated_over_ten_requests_are_injected_once_each(tmp_path):
    a, b = _sets(tmp_path)
    generator = Generator("tiny:wan", GeneratorConfig(adapters={"a": a, "b": b}))
    outputs = {}
    for i in range(10):
        name = "ab"[i % 2]
        result = generator.generate(_request(name), keep_latents=True)
        assert result.steps == ["full", "calibrated", "calibrated"] * 2
        if name in outputs:  # switching back to a resident set gives exactly what it gave before
            torch.testing.assert_close(result.latents, outputs[name], atol=0, rtol=0)
        outputs[name] = result.latents
    assert generator.engine.adapter_cache.injections == 2
    assert not torch.equal(outputs["a"], outputs["b"])


def test_an_lru_of_one_set_reinjects_and_matches_a_fresh_generator(tmp_path):
    a, b = _sets(tmp_path)
    small = Generator("tiny:wan", GeneratorConfig(adapters={"a": a, "b": b}, cache=CacheLimits(max_sets=1)))
    for name in "abab":
        last = small.generate(_request(name), keep_latents=True)
    assert small.engine.adapter_cache.injections == 4 and small.engine.adapter_cache.evictions == 3
    assert len(small.engine.adapter_cache) == 1
    fresh = Generator("tiny:wan", GeneratorConfig(adapters={"b": b})).generate(_request("b"), keep_latents=True)
    torch.testing.assert_close(last.latents, fresh.latents, atol=0, rtol=0)
    # evicting every set unwraps the peft layers: full compute is again the plain model's
    small.engine.adapter_cache.clear()
    assert not any("lora" in n for n, _ in small.pipe.transformer.named_parameters())


def test_requests_are_resolved_against_the_model_with_its_defaults():
    generator = Generator("tiny:wan")
    result = generator.generate("a red circle", num_inference_steps=STEPS)
    r = result.request
    assert (r.height, r.width, r.num_frames, r.output_format, r.guidance_scale) == (16, 16, 5, "mp4", 4.0)
    assert result.frames.shape == (5, 16, 16, 3) and result.frames.dtype == np.float32
    assert result.calls == {"full": 2 * STEPS, "bridged": 0, "calibrated": 0}
    assert set(result.timings) == {"text_encoders", "denoise", "decode", "transformer", "total"}
    assert 0 < result.timings["transformer"] <= result.timings["denoise"] <= result.timings["total"]
    with pytest.raises(ValueError, match=r"num_frames=6: wan needs 4k\+1 frames \(e.g. 5 or 9\)"):
        generator.generate("a red circle", num_frames=6)
    with pytest.raises(ValueError, match="height=20 is not a multiple of 16"):
        generator.generate("a red circle", height=20)


def test_progress_is_reported_every_step_and_cancel_stops_at_a_step_boundary():
    generator = Generator("tiny:flux")
    seen = []
    generator.generate(_request(), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, STEPS) for i in range(1, STEPS + 1)]
    seen.clear()
    with pytest.raises(GenerationCancelled, match="after step 2 of 6") as info:
        generator.generate(_request(), progress=lambda done, total: seen.append(done), cancel=lambda: len(seen) >= 2)
    assert info.value.step == 2 and seen == [1, 2]
    again = generator.generate(_request(), keep_latents=True)  # the interrupted bridge state was reset
    assert again.steps == ["full", "bridged", "bridged"] * 2


def test_an_adapter_set_for_another_schedule_or_partial_is_refused_before_any_step(tmp_path):
    a, = _sets(tmp_path, seeds=(1,))
    generator = Generator("tiny:wan", GeneratorConfig(adapters={"a": a}))
    seen = []
    with pytest.raises(ValueError, match="schedule: set was calibrated for periodic:3 over 6 steps"):
        generator.generate(GenerationRequest("a red circle", num_inference_steps=STEPS, schedule="2", adapters="a"),
                           progress=lambda *args: seen.append(args))
    assert seen == []
    transformer = generator.pipe.transformer
    partial = random_adapter_set(transformer, Schedule.periodic(STEPS, 3), branches=("cond",), std=0.1)
    partial.save(tmp_path / "partial")
    generator.engine.adapters["partial"] = str(tmp_path / "partial")
    with pytest.raises(ValueError, match="uncond"):
        generator.generate(_request("partial"))
    result = generator.generate(_request("partial", allow_uncovered=True))
    assert result.calls["calibrated"] == 4 and result.calls["bridged"] == 8  # the uncond bridges ran uncalibrated
