"""Resident adapters: one LoRA per bridge switched in place, checked against peft's own adapter switching."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from lbdist import Schedule, bridge_stats, disable_bridge, enable_bridge
from lbdist.bridge import AdapterSet, LoraSettings, random_adapter_set
from lbdist.models import BlockArgs, get_spec
from helpers import generate, make_pipe

STEPS = 7


def _adapters(pipe, schedule, rank=4, std=0.2, **kw):
    spec = get_spec(pipe.transformer)
    return random_adapter_set(pipe.transformer, schedule, lora=LoraSettings(rank, 2.0 * rank, spec.lora_targets),
                              std=std, **kw)


def test_every_bridged_call_runs_its_own_adapter_exactly_as_peft_set_adapter_would(family, pipe):
    schedule = Schedule.periodic(STEPS, 3)
    enable_bridge(pipe, schedule)
    uncalibrated = generate(pipe, family, steps=STEPS)
    adapters = _adapters(pipe, schedule)
    spec = get_spec(pipe.transformer)
    final = spec.final_block(pipe.transformer)
    runtime = enable_bridge(pipe, schedule, adapters=adapters)
    args = BlockArgs(final)
    records = []  # (plan, branch, the arguments the block ran on, its output)

    def keep(module, a, kw, out):
        cur = runtime.current
        if not cur.plan.full:  # the bridge ran the block on the branch's cached stream
            records.append((cur.plan, cur.branch, {**args.bind(a, kw), **cur.state.cache}, out))

    handle = final.register_forward_hook(keep, with_kwargs=True)
    calibrated = generate(pipe, family, steps=STEPS)
    handle.remove()
    assert not torch.equal(uncalibrated, calibrated)
    assert bridge_stats(pipe)["calibrated"] == bridge_stats(pipe)["bridged"] == len(records) > 0
    disable_bridge(pipe)

    # Reference: a copy of the plain final block holding every adapter, switched with peft's public API.
    reference = copy.deepcopy(final)
    for (step, branch), state in adapters.weights.items():
        name = f"s{step}{branch}"
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8.0, target_modules=list(spec.lora_targets)), reference,
                                adapter_name=name)
        set_peft_model_state_dict(reference, state, adapter_name=name)
    for plan, branch, inputs, out in records:
        for layer in reference.modules():
            if isinstance(layer, BaseTunerLayer):
                layer.set_adapter(f"s{plan.step}{branch}")
        with torch.no_grad():
            expected = args.call(reference, inputs)
        for x, y in zip(spec.unpack_output(out).values(), spec.unpack_output(expected).values()):
            assert torch.equal(x, y), (plan, branch)


def test_zero_adapters_equal_the_uncalibrated_bridge_and_full_steps_ignore_adapters(family, pipe):
    schedule = Schedule.periodic(STEPS, 3)
    enable_bridge(pipe, schedule)
    uncalibrated = generate(pipe, family, steps=STEPS)
    zero = _adapters(pipe, schedule)
    for state in zero.weights.values():
        for key in state:
            if "lora_B" in key:
                state[key].zero_()
    enable_bridge(pipe, schedule, adapters=zero)
    assert torch.equal(generate(pipe, family, steps=STEPS), uncalibrated)
    enable_bridge(pipe, Schedule.full(STEPS))
    plain = generate(pipe, family, steps=STEPS)
    disable_bridge(pipe)
    assert torch.equal(generate(pipe, family, steps=STEPS), plain)


def test_adapters_are_resident_no_file_is_read_during_sampling(tmp_path, monkeypatch):
    pipe = make_pipe("flux")
    schedule = Schedule.periodic(STEPS, 3)
    _adapters(pipe, schedule).save(tmp_path / "set")
    loaded = AdapterSet.load(tmp_path / "set")
    enable_bridge(pipe, schedule, adapters=loaded)
    import safetensors.torch

    def no_io(*a, **k):
        raise AssertionError("file read during sampling")

    monkeypatch.setattr(safetensors.torch, "load_file", no_io)
    monkeypatch.setattr(torch, "load", no_io)
    generate(pipe, "flux", steps=STEPS)
    assert bridge_stats(pipe)["calibrated"] == len(schedule.bridged_steps)


def test_adapters_take_the_blocks_dtype_and_disable_removes_every_lora_layer():
    pipe = make_pipe("flux")
    pipe.transformer.to(torch.bfloat16)
    schedule = Schedule.periodic(STEPS, 3)
    enable_bridge(pipe, schedule, adapters=_adapters(pipe, schedule))
    final = get_spec(pipe.transformer).final_block(pipe.transformer)
    lora = [p for n, p in final.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in lora)
    disable_bridge(pipe)
    assert not any(isinstance(m, BaseTunerLayer) for m in pipe.transformer.modules())
    assert not any("lora_" in n for n, _ in pipe.transformer.named_parameters())


@pytest.mark.parametrize("change,message", [
    ("schedule", r"schedule: set was calibrated for periodic:3 over 7 steps, bridge asked for periodic:2 over 7"),
    ("digest", r"transformer config digest: set .*, pipeline "),
    ("model", r"model: set is for WanTransformer3DModel \(wan\), pipeline has FluxTransformer2DModel \(flux\)"),
])
def test_an_adapter_set_for_another_model_or_schedule_is_refused(change, message):
    flux = make_pipe("flux")
    schedule = Schedule.periodic(STEPS, 3)
    adapters = _adapters(flux, schedule)
    target, asked = flux, schedule
    if change == "schedule":
        asked = Schedule.periodic(STEPS, 2)
    elif change == "digest":
        target = make_pipe("flux", num_single_layers=3)
    else:
        wan = make_pipe("wan")
        adapters = _adapters(wan, schedule)
    with pytest.raises(ValueError, match=message):
        enable_bridge(target, asked, adapters=adapters)
