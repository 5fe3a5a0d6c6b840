"""The bridge runtime on tiny real pipelines of every family: exactness, skipping, caches, reset."""
from __future__ import annotations

import pytest
import torch

from lbdist import Schedule, bridge_stats, disable_bridge, enable_bridge
from lbdist.models import BlockArgs, get_spec
from helpers import generate, make_pipe


def _attention_of(block: torch.nn.Module) -> torch.nn.Module:
    """The first attention module of a block: it runs whenever the block itself is entered."""
    return block.attn1 if hasattr(block, "attn1") else block.attn


def _count_entries(pipe):
    spec = get_spec(pipe.transformer)
    counts = [0] * len(spec.blocks(pipe.transformer))
    for i, block in enumerate(spec.blocks(pipe.transformer)):
        _attention_of(block).register_forward_pre_hook(lambda m, a, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def test_every_step_full_is_bit_identical_to_plain_diffusers(family, pipe):
    plain = generate(pipe, family, steps=8)
    enable_bridge(pipe, Schedule.full(8))
    bridged = generate(pipe, family, steps=8)
    assert torch.equal(plain, bridged)
    assert bridge_stats(pipe)["bridged"] == 0


def test_block_invocations_follow_the_schedule_and_skipped_blocks_are_never_entered(family, pipe):
    steps, n = 20, 5
    branches = 2 if family == "wan" else 1  # the Wan call uses classifier-free guidance (two branches)
    schedule = Schedule.periodic(steps, n)
    counts = _count_entries(pipe)
    enable_bridge(pipe, schedule)
    generate(pipe, family, steps=steps)
    full = len(schedule.full_steps)  # 4 of 20
    assert full == 4
    assert counts[:-1] == [full * branches] * (len(counts) - 1)  # blocks 0..L-2: full steps only
    assert counts[-1] == steps * branches                         # the final block: every step
    assert bridge_stats(pipe) == {"full": full * branches, "bridged": (steps - full) * branches, "calibrated": 0}


def test_bridged_output_differs_but_is_close_to_full_compute(family, pipe):
    plain = generate(pipe, family, steps=10)
    enable_bridge(pipe, Schedule.periodic(10, 3))
    bridged = generate(pipe, family, steps=10)
    assert not torch.equal(plain, bridged)
    rel = ((bridged - plain).norm() / plain.norm()).item()
    assert 0 < rel < 0.5


def test_two_generations_with_one_seed_are_identical_and_disable_restores_the_original(family, pipe):
    plain = generate(pipe, family, steps=9)
    enable_bridge(pipe, Schedule.periodic(9, 4))
    first = generate(pipe, family, steps=9)
    second = generate(pipe, family, steps=9)
    assert torch.equal(first, second)  # state was reset between calls
    disable_bridge(pipe)
    assert torch.equal(generate(pipe, family, steps=9), plain)
    assert not any(hasattr(m, "_diffusers_hook") and m._diffusers_hook.hooks for m in pipe.transformer.modules())


def test_guidance_branches_keep_separate_caches():
    """Wan with guidance > 1 calls the transformer for 'cond' and 'uncond' at every step: each bridged call
    must run the final block on its own branch's anchor input."""
    pipe = make_pipe("wan")
    final = get_spec(pipe.transformer).final_block(pipe.transformer)
    seen = []  # (branch, step, input of the final block's first norm = the stream the block runs on)
    runtime = enable_bridge(pipe, Schedule.periodic(6, 3))
    final.norm1.register_forward_pre_hook(
        lambda m, a: seen.append((runtime.current.branch, runtime.current.plan.step, a[0].detach().clone())))
    generate(pipe, "wan", steps=6, guidance_scale=5.0)
    by = {(b, s): x for b, s, x in seen}
    assert sorted({b for b, _, _ in seen}) == ["cond", "uncond"]
    for branch, other in (("cond", "uncond"), ("uncond", "cond")):
        for step, anchor in ((1, 0), (2, 0), (4, 3), (5, 3)):
            assert torch.equal(by[(branch, step)], by[(branch, anchor)])
        assert not torch.equal(by[(branch, 1)], by[(other, 0)])


def test_final_block_alone_on_recorded_inputs_reproduces_the_in_model_output(family, pipe):
    """The calibration contract: at a full step, calling the final block by itself with the recorded
    inputs (cached stream + the step's own conditioning) gives exactly the in-model output."""
    spec = get_spec(pipe.transformer)
    final = spec.final_block(pipe.transformer)
    args = BlockArgs(final)
    records = []

    def keep(module, a, kw, out):
        records.append((args.bind(a, kw), out))

    handle = final.register_forward_hook(keep, with_kwargs=True)
    generate(pipe, family, steps=3)
    handle.remove()
    assert records
    with torch.no_grad():
        for inputs, out in records:
            again = args.call(final, inputs)
            for x, y in zip(spec.unpack_output(out).values(), spec.unpack_output(again).values()):
                assert torch.equal(x, y)


def test_pipeline_step_count_must_match_the_schedule(family, pipe):
    enable_bridge(pipe, Schedule.periodic(10, 3))
    with pytest.raises(ValueError, match=r"runs 6 denoising steps but the bridge schedule has 10"):
        generate(pipe, family, steps=6)


def test_transformer_call_outside_a_cache_context_is_refused():
    pipe = make_pipe("wan")
    enable_bridge(pipe, Schedule.periodic(4, 2))
    t = pipe.transformer
    x = torch.randn(1, 16, 2, 2, 2)
    with pytest.raises(RuntimeError, match=r"cache_context"):
        t(hidden_states=x, timestep=torch.tensor([1.0]), encoder_hidden_states=torch.randn(1, 4, 32))


def test_enable_twice_replaces_the_first_bridge():
    pipe = make_pipe("flux")
    enable_bridge(pipe, Schedule.periodic(6, 2))
    enable_bridge(pipe, Schedule.periodic(6, 3))
    generate(pipe, "flux", steps=6)
    assert bridge_stats(pipe) == {"full": 2, "bridged": 4, "calibrated": 0}
    final = get_spec(pipe.transformer).final_block(pipe.transformer)
    assert list(final._diffusers_hook.hooks) == ["lbdist_bridge_final"]
