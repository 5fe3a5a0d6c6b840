"""Training a group of bridges together: one ZeRO-2 engine, data-parallel over all their pairs.

`JointFit` is the loop every training worker runs (inside Ray Train's `TorchTrainer` in a job, or in plain
gloo processes in tests). It reproduces the single-process trainer (`lbdist.calibrate.trainer._fit`) for every
bridge at once: one epoch is one optimiser step over all of a bridge's training pairs; each pair's loss is
`pair_loss(...) / pairs of its bridge`, so the data-parallel sum over ranks is the single-process gradient (the
engine averages over ranks, so the loss is also multiplied by the number of ranks); each bridge's gradient is
clipped to its own norm; every `eval_every` epochs each bridge's watched loss (held-out pairs, else the epoch's
training loss) decides early stopping exactly as there, and a bridge that stops keeps its best weights and is
frozen while the others go on. Every decision is computed from all-reduced numbers, so it is the same on every
rank (DESIGN.md, style 5).

Each rank holds only its own pairs (`assign_pairs`). A rank with fewer pairs than another in an epoch runs
zero-weight passes on one of its pairs, so every rank runs the same number of backward passes (ZeRO-2 reduces
gradients during each one). `should_stop()` is polled at every pass; when it says stop, the epoch in progress is
abandoned (its gradients are never applied), so a checkpoint taken then resumes exactly.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..calibrate.objective import pair_loss


@dataclass(frozen=True)
class BridgePlan:
    """One bridge of a training group.

    key: (bridged step, branch). seed: its LoRA's seed (the single-process trainer's `bridge_seed`).
    train_pairs, held_pairs: how many pairs it trains on / watches for early stopping (all ranks together).
    max_epochs: its epoch cap. keep_last: keep the last weights instead of the best (refit phases).
    """

    key: tuple[int, str]
    seed: int
    train_pairs: int
    held_pairs: int = 0
    max_epochs: int = 1
    keep_last: bool = False


@dataclass
class BridgeProgress:
    """Where one bridge's training stands (identical on every rank; JSON-able for checkpoints)."""

    first: float | None = None
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0
    done: bool = False
    epochs_run: int = 0
    train_loss_last: float = float("nan")
    stopped_early: bool = False


@dataclass
class LocalPair:
    """A pair this rank holds: which bridge of the group, the pair, whether it is held out, and whether it is
    only padding (a rank with no pair of its own borrows one for its zero-weight passes)."""

    bridge: int
    pair: object
    held: bool = False
    pad: bool = False


def assign_pairs(items: list, world: int) -> list[list[int]]:
    """Indices of `items` per rank, round-robin over a fixed order (bridges interleaved, so every rank gets a
    share of every bridge and early-stopped bridges thin all ranks alike)."""
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world}")
    return [list(range(r, len(items), world)) for r in range(world)]


@dataclass
class JointFit:
    """The joint training loop of one group of bridges on one rank (see the module docstring)."""

    routed: object
    engine: object
    spec: object
    config: object  # resolved TrainConfig
    plans: list[BridgePlan]
    pairs: list[LocalPair]
    progress: list[BridgeProgress] = field(default_factory=list)
    best: dict[int, torch.Tensor] = field(default_factory=dict)  # bridge -> its best flat fp32 weights
    epoch: int = 0
    started: bool = False
    seconds: float = 0.0

    def __post_init__(self):
        if not self.progress:
            self.progress = [BridgeProgress() for _ in self.plans]
        self.world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.device = self.routed.flat[0].device

    # --- collectives ------------------------------------------------------------------------------------
    def _sum(self, values: torch.Tensor) -> torch.Tensor:
        values = values.to(self.device, torch.float64)
        if self.world > 1:
            torch.distributed.all_reduce(values)
        return values.cpu()

    def _max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        if self.world > 1:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    # --- pieces -----------------------------------------------------------------------------------------
    def active(self) -> list[int]:
        return [i for i, p in enumerate(self.progress) if not p.done]

    def _losses(self, held: bool, bridges: set[int]) -> torch.Tensor:
        """Mean loss per bridge over its held-out (or training) pairs, all ranks together; no gradients."""
        sums = torch.zeros(len(self.plans), dtype=torch.float64)
        with torch.no_grad():
            for item in self.pairs:
                if item.held == held and item.bridge in bridges and not item.pad:
                    self.routed.route(item.bridge)
                    sums[item.bridge] += pair_loss(self.routed.block, self.spec, item.pair, self.config).item()
        counts = torch.tensor([p.held_pairs if held else p.train_pairs for p in self.plans], dtype=torch.float64)
        return self._sum(sums) / counts.clamp_min(1)

    def _snapshot(self, indices: list[int]) -> None:
        from ..calibrate.zero import full_fp32

        for i in indices:
            self.best[i] = full_fp32(self.engine, self.routed.bridge_parameters(i))[0]

    def start(self) -> None:
        """Epoch 0: every bridge's uncalibrated loss on what it watches; the initial weights are the best so far."""
        watched = {i for i, p in enumerate(self.plans) if p.held_pairs}
        held = self._losses(True, watched) if watched else None
        train = self._losses(False, set(range(len(self.plans))) - watched)
        for i, prog in enumerate(self.progress):
            prog.first = prog.best = float(held[i] if i in watched else train[i])
        self._snapshot(list(range(len(self.plans))))
        self.started = True

    def _epoch_pass(self, active: list[int], should_stop) -> torch.Tensor | None:
        """One epoch's backward passes over this rank's training pairs of `active` bridges; None if stopped."""
        mine = [item for item in self.pairs if not item.held and not item.pad and item.bridge in set(active)]
        passes = self._max(len(mine))
        spare = next((item for item in self.pairs if not item.held), self.pairs[0])
        sums = torch.zeros(len(self.plans), dtype=torch.float64)
        for k in range(passes):
            if should_stop():
                return None
            item, real = (mine[k], True) if k < len(mine) else (spare, False)
            self.routed.route(item.bridge)
            loss = pair_loss(self.routed.block, self.spec, item.pair, self.config)
            weight = self.world / self.plans[item.bridge].train_pairs if real else 0.0
            self.engine.backward(loss * weight)
            if real:
                sums[item.bridge] += loss.item() / self.plans[item.bridge].train_pairs
        return sums

    def _judge(self, active: list[int], train: torch.Tensor) -> list[int]:
        """Early stopping after this epoch, exactly as the single-process trainer; returns bridges now done."""
        cfg, epoch = self.config, self.epoch
        evaluate = [i for i in active if epoch % cfg.eval_every == 0 or epoch == self.plans[i].max_epochs]
        held_ids = {i for i in evaluate if self.plans[i].held_pairs}
        held = self._losses(True, held_ids) if held_ids else None
        improved, finished = [], []
        for i in active:
            prog, plan = self.progress[i], self.plans[i]
            prog.train_loss_last, prog.epochs_run = float(train[i]), epoch
            if i in evaluate:
                value = float(held[i]) if i in held_ids else float(train[i])
                if plan.keep_last or value < prog.best * (1 - cfg.min_delta):
                    prog.best, prog.best_epoch, prog.stale = value, epoch, 0
                    improved.append(i)
                else:
                    prog.stale += 1
                    if prog.stale >= cfg.patience:
                        prog.done = True
                if cfg.max_seconds is not None and self.seconds > cfg.max_seconds:
                    prog.done = True
            if epoch >= plan.max_epochs:
                prog.done = True
            if prog.done:
                prog.stopped_early = epoch < plan.max_epochs
                finished.append(i)
        self._snapshot(improved)
        return finished

    def run(self, should_stop=lambda: False, on_epoch=None) -> bool:
        """Train until every bridge is done (True) or `should_stop()` says stop (False, state at the last whole
        epoch). `on_epoch(fit, finished)` runs after each epoch with the bridges that finished in it."""
        from ..calibrate.zero import freeze_groups

        if not self.started:
            self.start()
        freeze_groups(self.engine, [i for i, p in enumerate(self.progress) if p.done])
        while self.active():
            active = self.active()
            begin = time.perf_counter()
            sums = self._epoch_pass(active, should_stop)
            if sums is None:
                return False
            self.engine.step()
            self.epoch += 1
            self.seconds += time.perf_counter() - begin
            finished = self._judge(active, self._sum(sums))
            freeze_groups(self.engine, finished)
            if on_epoch is not None:
                on_epoch(self, finished)
        return True

    # --- results and checkpoints --------------------------------------------------------------------------
    def result(self, index: int) -> tuple[dict, dict]:
        """(peft state dict, info) of a finished bridge, as `train_bridge` returns them."""
        prog, plan = self.progress[index], self.plans[index]
        state = self.routed.state(index, self.best[index])
        info = {"loss_uncalibrated": prog.first, "loss_best": prog.best, "best_epoch": prog.best_epoch,
                "epochs_run": prog.epochs_run, "stopped_early": prog.stopped_early,
                "train_loss_last": prog.train_loss_last, "watched": "held_out" if plan.held_pairs else "train",
                "train_pairs": plan.train_pairs, "held_out_pairs": plan.held_pairs,
                "seconds": round(self.seconds, 3), "trained_with": f"ZeRO-{self.engine.zero_optimization_stage()} "
                                                                    f"on {self.world} workers"}
        return state, info

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seconds": self.seconds, "started": self.started,
                "progress": [asdict(p) for p in self.progress], "bridges": [list(p.key) for p in self.plans]}

    def load_state_dict(self, state: dict, best: dict[int, torch.Tensor]) -> None:
        if [tuple(b) for b in state["bridges"]] != [p.key for p in self.plans]:
            raise ValueError("the checkpoint was written for another group of bridges")
        self.epoch, self.seconds, self.started = state["epoch"], state["seconds"], state["started"]
        self.progress = [BridgeProgress(**p) for p in state["progress"]]
        self.best = best
