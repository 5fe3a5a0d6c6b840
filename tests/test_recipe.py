"""Calibration recipes (issue 17) on tiny real pipelines: what a bridged step computes at run time is what
training assumed.

For each recipe option, a bridged rollout's final-block output (adapter switched on, input formed by the
runtime from the adapter set's manifest) must equal the trainer's own forward (`objective.block_output` on a
`Pair` built from the rollout's cached streams and conditioning); the trainer's output head must equal the
model's; the recording keeps samples, splits, previous streams and head conditioning; `recipe="paper"` trains
what it trained before; distributed calibration refuses other recipes at submission; bad values are refused.
"""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

from lbdist import Schedule
from lbdist.bridge import BridgeConfig, apply_bridge, remove_bridge
from lbdist.calibrate import RecordConfig, TrainConfig, record_pairs, train_adapters
from lbdist.calibrate.head import apply_head, capture_head_inputs, head_conditioning
from lbdist.calibrate.objective import block_output, pair_loss
from lbdist.calibrate.store import read_index, read_manifest
from lbdist.calibrate.trainer import Pair
from lbdist.models import BlockArgs, get_spec
from helpers import call_kwargs, make_pipe

torch.set_num_threads(1)
STEPS = 10
PROMPTS = ("a red circle moving left", "a blue square moving up")
VALIDATION = ("a green triangle moving right",)
QUICK = dict(rank=4, alpha=8.0, lr=3e-3, max_epochs=12, eval_every=4, patience=5)


def _record(pipe, family, schedule, root, **extra):
    call = {k: v for k, v in call_kwargs(family, STEPS).items() if k not in ("num_inference_steps", "output_type")}
    config = RecordConfig(prompts=PROMPTS, call_kwargs=call, **extra)
    record_pairs(pipe, schedule, config, root / "pairs", progress=False)
    return root / "pairs"


def _rollout(pipe, family, schedule, adapters):
    """A bridged rollout; per (step, branch): the final block's stream inputs (full steps), conditioning and
    output (every step)."""
    runtime = apply_bridge(pipe, config=BridgeConfig(schedule, adapters=adapters))
    spec = get_spec(pipe.transformer)
    final = spec.final_block(pipe.transformer)
    args = BlockArgs(final)
    seen = {}

    def pre(module, a, kw):  # outside the bridge hook: sees the model's own stream (used at full steps only)
        cur = runtime.current
        bound = args.bind(a, kw)
        seen[(cur.plan.step, cur.branch)] = {
            "stream": {n: bound[n].detach().clone() for n in spec.stream_names},
            "cond": {k: v for k, v in bound.items() if k not in spec.stream_names}}

    def post(module, a, kw, output):
        cur = runtime.current
        seen[(cur.plan.step, cur.branch)]["out"] = spec.unpack_output(output)["hidden_states"].detach().clone()

    handles = [final.register_forward_pre_hook(pre, with_kwargs=True),
               final.register_forward_hook(post, with_kwargs=True)]
    try:
        with torch.no_grad():
            pipe(prompt="a yellow circle moving down", generator=torch.Generator().manual_seed(5),
                 **call_kwargs(family, STEPS))
    finally:
        for h in handles:
            h.remove()
    stats, inputs = dict(runtime.stats), runtime.inputs
    remove_bridge(pipe)
    return seen, stats, inputs


def _adapted(block, state, lora):
    work = copy.deepcopy(block)
    inject_adapter_in_model(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.targets)), work,
                            adapter_name="calibrating")
    set_peft_model_state_dict(work, state, adapter_name="calibrating")
    return work


@pytest.mark.parametrize("family,options", [
    ("wan", dict(bridge_input="extrapolate")),  # guided objective (cond + uncond jointly), extrapolated input
    ("hunyuan_video", dict(objective="output", bridge_input="extrapolate")),
    ("flux", dict(recipe="paper")),
])
def test_bridged_rollout_output_equals_the_trainers_forward(tmp_path, family, options):
    pipe = make_pipe(family)
    pipe.set_progress_bar_config(disable=True)
    schedule = Schedule.periodic(STEPS, 3)
    pairs = _record(pipe, family, schedule, tmp_path, validation_prompts=VALIDATION)
    config = TrainConfig(**options, **QUICK).resolved(family)
    adapters = train_adapters(pipe.transformer, pairs, tmp_path / "a", config, progress=False)
    assert adapters.extra["bridge_input"] == config.bridge_input
    assert any(float(v.abs().max()) > 0 for s in adapters.weights.values() for k, v in s.items() if "lora_B" in k)
    seen, stats, inputs = _rollout(pipe, family, schedule, str(tmp_path / "a"))  # from disk: the manifest's input
    assert stats["calibrated"] == stats["bridged"] > 0 and inputs == config.bridge_input
    spec = get_spec(pipe.transformer)
    final = spec.final_block(pipe.transformer)
    extrapolated = 0
    for (step, branch), state in adapters.weights.items():
        plan = schedule.plan(step)
        before = [s for s in schedule.full_steps if s < plan.anchor]
        previous = before[-1] if before else None
        pair = Pair(0, seen[(plan.anchor, branch)]["stream"], seen[(step, branch)]["cond"], seen[(step, branch)]["out"],
                    previous=seen[(previous, branch)]["stream"] if previous is not None else None,
                    steps=(step, plan.anchor, previous))
        extrapolated += previous is not None and config.bridge_input == "extrapolate"
        with torch.no_grad():
            trained = block_output(_adapted(final, state, adapters.lora), spec, pair, config)
        torch.testing.assert_close(trained, seen[(step, branch)]["out"], rtol=1e-5, atol=1e-6)
    assert len(adapters.weights) == len(schedule.bridged_steps) * len(adapters.branches)
    assert extrapolated > 0 or config.bridge_input == "cached"


def test_extrapolated_input_differs_from_cached_and_is_refused_for_a_cached_set(tmp_path):
    pipe = make_pipe("hunyuan_video")
    pipe.set_progress_bar_config(disable=True)
    schedule = Schedule.periodic(STEPS, 3)
    outs = {}
    for mode in ("cached", "extrapolate"):
        apply_bridge(pipe, config=BridgeConfig(schedule, bridge_input=mode))
        with torch.no_grad():
            outs[mode] = pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0),
                              **call_kwargs("hunyuan_video", STEPS)).frames
    assert not torch.equal(outs["cached"], outs["extrapolate"])
    pairs = _record(pipe, "hunyuan_video", schedule, tmp_path)
    train_adapters(pipe.transformer, pairs, tmp_path / "a", TrainConfig(recipe="paper", **QUICK), progress=False)
    with pytest.raises(ValueError, match="calibrated with bridge_input 'cached'"):
        apply_bridge(pipe, config=BridgeConfig(schedule, adapters=str(tmp_path / "a"), bridge_input="extrapolate"))
    remove_bridge(pipe)


@pytest.mark.parametrize("family", ["wan", "hunyuan_video", "flux"])
def test_the_trainers_output_head_equals_the_models_output(family):
    pipe = make_pipe(family)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    spec = get_spec(transformer)
    final = spec.final_block(transformer)
    args = BlockArgs(final)
    sink, seen = {}, []

    def on_final(module, a, kw, output):
        bound = args.bind(a, kw)
        cond = {k: v for k, v in bound.items() if k not in spec.stream_names}
        seen.append([spec.unpack_output(output)["hidden_states"], head_conditioning(family, cond, sink)])

    def on_model(module, a, kw, output):
        seen[-1].append(output[0] if isinstance(output, tuple) else output.sample)

    handles = [final.register_forward_hook(on_final, with_kwargs=True),
               transformer.register_forward_hook(on_model, with_kwargs=True)]
    extra = capture_head_inputs(transformer, family, sink)
    with torch.no_grad():
        pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(0), **call_kwargs(family, 3))
    for h in handles + ([extra] if extra is not None else []):
        h.remove()
    assert seen
    for hidden, head, model_output in seen:
        tokens = apply_head(transformer, family, hidden, head)
        # unpatchify only reorders values: compare as sorted multisets
        torch.testing.assert_close(tokens.flatten().sort().values, model_output.flatten().sort().values)


def test_lbdist_recipe_defaults_per_family():
    assert TrainConfig().resolved("hunyuan_video").bridge_input == "extrapolate"
    assert TrainConfig().resolved("flux").objective == "guided"
    assert (TrainConfig().resolved("wan").objective, TrainConfig().resolved("wan").bridge_input) == ("guided", "cached")
    assert TrainConfig(bridge_input="extrapolate").resolved("wan").bridge_input == "extrapolate"


def test_recording_keeps_samples_splits_previous_streams_and_head(tmp_path):
    pipe = make_pipe("wan")
    pipe.set_progress_bar_config(disable=True)
    schedule = Schedule.periodic(STEPS, 3)
    pairs = _record(pipe, "wan", schedule, tmp_path, seeds_per_prompt=2, validation_prompts=VALIDATION)
    manifest = read_manifest(pairs)
    assert [s[2] for s in manifest["samples"]] == ["train"] * 4 + ["validation"]
    assert len({s[1] for s in manifest["samples"]}) == 5  # every sample its own seed
    entries = read_index(pairs)
    assert {e["prompt"] for e in entries} == set(range(5))
    assert {e["split"] for e in entries if e["prompt"] == 4} == {"validation"}
    assert all(e["head"] is not None for e in entries)
    first = [e for e in entries if e["anchor"] == 0]
    later = [e for e in entries if e["anchor"] == 3]
    assert first and all(e["stream_previous"] is None for e in first)
    assert later and all(e["previous"] == 0 and e["stream_previous"] for e in later)
    # validation samples are watched, never trained on
    adapters = train_adapters(pipe.transformer, pairs, tmp_path / "a", TrainConfig(**QUICK), progress=False)
    info = adapters.extra["training"]["1_cond"]
    assert info["watched"] == "held_out" and info["held_out_pairs"] == 1 and info["train_pairs"] == 4
    assert info["joint"] == ["cond", "uncond"] and adapters.extra["recipe"]["objective"] == "guided"


def test_paper_recipe_is_the_hidden_state_objective_on_the_cached_input(tmp_path):
    pipe = make_pipe("flux")
    pipe.set_progress_bar_config(disable=True)
    pairs = _record(pipe, "flux", Schedule.periodic(STEPS, 3), tmp_path)
    config = TrainConfig(recipe="paper", **QUICK).resolved("flux")
    assert (config.objective, config.bridge_input) == ("hidden", "cached")
    spec = get_spec(pipe.transformer)
    final = spec.final_block(pipe.transformer)
    entry = [e for e in read_index(pairs) if e["anchor"] == 3][0]
    from lbdist.calibrate.trainer import load_pairs

    pair = [p for p in load_pairs(pairs, entry["step"], "cond") if p.prompt == entry["prompt"]][0]
    assert pair.previous is not None  # recorded, and ignored by the cached input
    with torch.no_grad():
        out = BlockArgs(final).call(final, {**pair.cond, **pair.stream})
        expected = torch.nn.functional.mse_loss(spec.unpack_output(out)["hidden_states"], pair.target)
        torch.testing.assert_close(pair_loss(final, spec, pair, config), expected)
    adapters = train_adapters(pipe.transformer, pairs, tmp_path / "a", config, progress=False)
    assert adapters.extra["bridge_input"] == "cached" and adapters.extra["recipe"]["recipe"] == "paper"


def test_distributed_calibration_refuses_other_recipes_at_submission():
    from lbdist.distributed.config import CalibrationJob

    job = dict(family="wan", model="tiny:wan", prompts=("a",), schedule="4", steps=8, output="/tmp/x", run_id="r")
    CalibrationJob(**job)  # the paper recipe by default
    for train, named in ((TrainConfig(), "recipe 'lbdist'"), (TrainConfig(recipe="paper", objective="output"),
                                                               "objective 'output'")):
        with pytest.raises(ValueError, match=f"distributed calibration runs recipe 'paper' only.*{named}"):
            CalibrationJob(**job, train=train)


@pytest.mark.parametrize("make,message", [
    (lambda: TrainConfig(recipe="fast"), "recipe must be one of ('lbdist', 'paper'), got 'fast'"),
    (lambda: TrainConfig(objective="latent"), "objective must be one of ('hidden', 'output', 'guided')"),
    (lambda: TrainConfig(bridge_input="second"), "bridge_input must be one of ('cached', 'extrapolate')"),
    (lambda: RecordConfig(("a",), seeds_per_prompt=0), "seeds_per_prompt must be an integer >= 1, got 0"),
    (lambda: RecordConfig(("a",), validation_prompts=("b",), validation_seeds=(1, 2)), "2 validation seeds for 1"),
    (lambda: BridgeConfig(Schedule.periodic(8, 4), bridge_input="cache"), "bridge_input must be one of"),
])
def test_bad_recipe_values_are_refused(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


def test_recording_without_previous_streams_is_refused_for_extrapolation(tmp_path):
    import json

    pipe = make_pipe("flux")
    pipe.set_progress_bar_config(disable=True)
    pairs = _record(pipe, "flux", Schedule.periodic(STEPS, 3), tmp_path)
    index = pairs / "pairs.jsonl"
    if index.is_file():
        lines = [json.loads(x) for x in index.read_text().splitlines() if x.strip()]
        index.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "stream_previous"}) + "\n"
                                 for e in lines))
        with pytest.raises(ValueError, match="recorded without the previous full step's stream"):
            train_adapters(pipe.transformer, pairs, tmp_path / "a", TrainConfig(**QUICK), progress=False)
