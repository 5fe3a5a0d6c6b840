"""The distributed trainer's pieces on the CPU: routed LoRA, ZeRO-2 joint training, checkpoints, shards, plans.

The joint trainer (`lbdist.distributed.joint.JointFit` over a `RoutedBlock`, DeepSpeed ZeRO-2 with the client
`BridgeAdamW`, gloo) must reproduce the single-process trainer (`lbdist.calibrate.train_adapters`) bridge for
bridge, on one rank and on two, including early stopping; a run stopped mid-epoch and restored from its
checkpoint must end exactly where an uninterrupted one does. Ranks are forked processes on loopback gloo.
"""
from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lbdist import Schedule
from lbdist.calibrate import RecordConfig, TrainConfig, record_pairs, train_adapters
from lbdist.calibrate.store import read_index
from lbdist.calibrate.trainer import bridge_seed, load_pairs, lora_copy
from lbdist.distributed.joint import BridgePlan, JointFit, LocalPair, assign_pairs
from lbdist.distributed.lora import RoutedBlock, initial_state
from lbdist.distributed.train import plan_groups
from lbdist.models import get_spec
from helpers import make_pipe

pytest.importorskip("deepspeed")
# DeepSpeed JIT-builds its CPU communication op on first use; a directory of our own keeps builds of other
# torch installs on this machine from invalidating ours (each rebuild takes ~40 s or more).
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/lbdist-tests/torch_extensions"))

CONFIG = TrainConfig(recipe="paper", rank=4, alpha=8.0, lr=1e-3, max_epochs=15, eval_every=5, patience=1, min_delta=0.2,
                     refit=False).resolved("wan")
PROMPTS = ("a red circle moving left", "a blue square moving up")
CALL = dict(height=32, width=32, num_frames=5, guidance_scale=4.0, max_sequence_length=12)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(pipe, pairs dir, single-process adapter set) for a tiny Wan pipeline, 8 steps, periodic 4."""
    root = tmp_path_factory.mktemp("zero")
    pipe = make_pipe("wan")
    record_pairs(pipe, Schedule.periodic(8, 4), RecordConfig(PROMPTS, call_kwargs=CALL), root / "pairs", progress=False)
    reference = train_adapters(pipe.transformer, root / "pairs", root / "single", CONFIG, progress=False)
    return pipe, root / "pairs", reference


def test_routed_block_starts_and_computes_like_the_peft_copy(recorded):
    pipe, pairs_dir, _ = recorded
    spec = get_spec(pipe.transformer)
    final = spec.final_block(pipe.transformer)
    seeds = [bridge_seed(0, 1, "cond"), bridge_seed(0, 2, "cond")]
    states = [initial_state(final, CONFIG, spec.lora_targets, s) for s in seeds]
    routed = RoutedBlock(copy.deepcopy(final), spec.lora_targets, [(1, "cond"), (2, "cond")], 4, 8.0, states)
    pair = load_pairs(pairs_dir, 2, "cond")[0]
    from lbdist.calibrate.objective import block_output

    for i, seed in enumerate(seeds):
        work, params = lora_copy(final, CONFIG, spec.lora_targets, seed)
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p) * 0.05)  # B starts at zero: make the LoRA matter
        from peft import get_peft_model_state_dict

        routed.load_state(i, get_peft_model_state_dict(work, adapter_name="calibrating"))
        routed.route(i)
        with torch.no_grad():
            torch.testing.assert_close(block_output(routed.block, spec, pair, CONFIG),
                                       block_output(work, spec, pair, CONFIG), rtol=0, atol=1e-6)
        assert routed.state(i).keys() == get_peft_model_state_dict(work, adapter_name="calibrating").keys()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _joint(pipe, pairs_dir, rank: int, world: int, stop_after: int | None = None, checkpoint: str | None = None):
    """One rank's JointFit over every recorded bridge (optionally restored from `checkpoint`)."""
    from lbdist.calibrate.zero import ZeroSettings, zero_engine

    spec = get_spec(pipe.transformer)
    bridges = sorted({(e["step"], e["branch"]) for e in read_index(pairs_dir)})
    final = spec.final_block(pipe.transformer)
    plans = [BridgePlan(b, bridge_seed(CONFIG.seed, *b), len(PROMPTS), 0, CONFIG.max_epochs) for b in bridges]
    routed = RoutedBlock(copy.deepcopy(final), spec.lora_targets, bridges, CONFIG.rank, CONFIG.alpha,
                         [initial_state(final, CONFIG, spec.lora_targets, p.seed) for p in plans])
    items = sorted((LocalPair(i, p) for i, b in enumerate(bridges) for p in load_pairs(pairs_dir, *b)),
                   key=lambda it: (it.pair.prompt, it.bridge))
    mine = [items[k] for k in assign_pairs(items, world)[rank]]
    engine = zero_engine(routed, [routed.bridge_parameters(i) for i in range(len(bridges))],
                         ZeroSettings(lr=CONFIG.lr, grad_clip=CONFIG.grad_clip))
    return JointFit(routed, engine, spec, CONFIG, plans, mine), bridges


def _rank_main(rank, world, port, pipe, pairs_dir, out, stop_at):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK="0")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from lbdist.calibrate.zero import destroy, load_state, save_state

    fit, bridges = _joint(pipe, pairs_dir, rank, world)
    if stop_at is not None:  # stop inside epoch `stop_at + 1`, checkpoint, and go on in a fresh engine
        calls = {"n": 0}

        def stop():
            calls["n"] += 1
            return fit.epoch >= stop_at and calls["n"] > 1

        assert fit.run(stop) is False and fit.epoch == stop_at
        save_state(fit.engine, out + ".ckpt")
        state, best = fit.state_dict(), dict(fit.best)
        fit, _ = _joint(pipe, pairs_dir, rank, world)
        load_state(fit.engine, out + ".ckpt")
        fit.load_state_dict(state, best)
    assert fit.run() is True
    if rank == 0:
        torch.save({b: fit.result(i) for i, b in enumerate(bridges)}, out)
    destroy()


def _run_ranks(recorded, tmp_path, world: int, stop_at: int | None = None) -> dict:
    pipe, pairs_dir, _ = recorded
    out = str(tmp_path / f"joint{world}-{stop_at}.pt")
    mp.start_processes(_rank_main, args=(world, _free_port(), pipe, pairs_dir, out, stop_at), nprocs=world,
                       start_method="fork")
    return torch.load(out)


def _compare(results: dict, reference, atol: float = 0.0) -> None:
    assert sorted(results) == sorted(reference.weights)
    for key, (state, info) in results.items():
        expected = reference.extra["training"][f"{key[0]}_{key[1]}"]
        assert (info["best_epoch"], info["epochs_run"], info["stopped_early"]) == \
            (expected["best_epoch"], expected["epochs_run"], expected["stopped_early"]), key
        for name, value in reference.weights[key].items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=atol)


@pytest.mark.parametrize("world", [1, 2])
def test_joint_zero2_training_equals_the_single_process_trainer(recorded, tmp_path, world):
    results = _run_ranks(recorded, tmp_path, world)
    reference = recorded[2]
    stopped = [k for k, (_, info) in results.items() if info["stopped_early"]]
    assert stopped and len(stopped) < len(results)  # early stopping exercised: some bridges stop, some do not
    _compare(results, reference, atol=1e-6)


def test_stopped_mid_epoch_and_restored_from_the_checkpoint_ends_the_same(recorded, tmp_path):
    _compare(_run_ranks(recorded, tmp_path, 2, stop_at=7), recorded[2], atol=1e-6)


def test_bridge_adamw_clips_each_bridge_to_its_own_norm():
    from lbdist.calibrate.zero import BridgeAdamW

    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))
    a2, b2 = (torch.nn.Parameter(p.detach().clone()) for p in (a, b))
    opt = BridgeAdamW([{"params": [a]}, {"params": [b]}], lr=0.1, weight_decay=0.0, max_norm=1.0, sharded=False)
    refs = [torch.optim.AdamW([a2], lr=0.1, weight_decay=0.0), torch.optim.AdamW([b2], lr=0.1, weight_decay=0.0)]
    for grad_a, grad_b in ((torch.full((5,), 3.0), torch.full((3,), 0.1)), (torch.full((5,), -0.2), torch.full((3,), 9.0))):
        a.grad, b.grad, a2.grad, b2.grad = grad_a.clone(), grad_b.clone(), grad_a.clone(), grad_b.clone()
        opt.step()
        for p, ref in ((a2, refs[0]), (b2, refs[1])):
            torch.nn.utils.clip_grad_norm_([p], 1.0)
            ref.step()
    torch.testing.assert_close(a, a2)
    torch.testing.assert_close(b, b2)
    opt.param_groups[1]["frozen"] = True
    before = b.detach().clone()
    a.grad, b.grad = torch.ones(5), torch.ones(3)
    opt.step()
    assert torch.equal(b, before)  # a frozen (early-stopped) bridge stays exactly as it was


def test_shards_round_trip_and_checksums():
    from lbdist.distributed.shards import decode_pair, encode_pair, read_meta

    stream = {"hidden_states": torch.randn(1, 8, 4)}
    cond = {"temb": torch.randn(1, 6, 4), "rotary_emb": (torch.randn(1, 8, 1, 2), torch.randn(1, 8, 1, 2)),
            "attention_mask": None, "n": 3}
    data = encode_pair({"prompt": 2, "step": 5, "branch": "cond", "anchor": 4}, stream, cond, torch.randn(1, 8, 4))
    pair = decode_pair(data)
    assert read_meta(data)["step"] == 5 and pair.prompt == 2
    assert torch.equal(pair.stream["hidden_states"], stream["hidden_states"])
    assert isinstance(pair.cond["rotary_emb"], tuple) and torch.equal(pair.cond["rotary_emb"][1], cond["rotary_emb"][1])
    assert pair.cond["attention_mask"] is None and pair.cond["n"] == 3


def test_warm_start_trains_in_waves_by_offset():
    from lbdist.distributed.train import _waves

    schedule = Schedule.periodic(10, 4)  # full 0, 4, 8
    bridges = [(s, b) for s in schedule.bridged_steps for b in ("cond", "uncond")]
    waves = _waves(bridges, schedule)
    assert [sorted({s for s, _ in w}) for w in waves] == [[1, 5, 9], [2, 6], [3, 7]]


def test_groups_of_bridges_fit_the_memory_budget():
    bridges = [(s, "cond") for s in range(1, 11)]
    per = {b: 10.0 for b in bridges}
    assert plan_groups(bridges, per, 20.0, None, None) == [bridges]
    groups = plan_groups(bridges, per, 20.0, 65.0, None)  # 4 bridges fit: 3 groups of at most 4, as equal as can be
    assert [len(g) for g in groups] == [4, 4, 2] and sum(groups, []) == bridges
    assert [len(g) for g in plan_groups(bridges, per, 0.0, None, 5)] == [5, 5]
    with pytest.raises(ValueError, match="one bridge needs about"):
        plan_groups(bridges, per, 20.0, 25.0, None)


def test_verify_finds_partial_and_corrupted_shards(tmp_path):
    from lbdist.distributed.layout import RunLayout
    from lbdist.distributed.record import _commit, verify
    from lbdist.distributed.shards import encode_pair, sha256

    layout = RunLayout.of(str(tmp_path), "run")
    for prompt in range(3):
        entries = []
        for step in (1, 2):
            entry = {"prompt": prompt, "step": step, "branch": "cond", "anchor": 0}
            data = encode_pair(entry, {"hidden_states": torch.randn(1, 4, 2)}, {}, torch.randn(1, 4, 2))
            path = Path(layout.shard(step, "cond", prompt))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            entries.append({**entry, "file": str(path.relative_to(layout.root)), "sha256": sha256(data),
                            "bytes": len(data)})
        _commit(layout, prompt, entries)
    partial = Path(layout.shard(2, "cond", 1))
    partial.write_bytes(partial.read_bytes()[:-8])
    flipped = Path(layout.shard(1, "cond", 2))
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: only the checksum sees it
    flipped.write_bytes(bytes(data))
    good, bad = verify(layout, full=False)
    assert sorted(good) == [0, 2] and bad == [1]  # by size: the flipped byte passes
    good, bad = verify(layout, full=True)
    assert sorted(good) == [0] and bad == [2]
    assert not Path(layout.index(1)).exists() and not Path(layout.index(2)).exists()
