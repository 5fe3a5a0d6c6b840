"""Are the toys shaped like the real models? The final block's FLOP share, the bf16 size, the CPU sampling time.

A LearniBridge bridged step runs the embeddings, the final block and the output head; on the real models the
final block costs 1/26 (Wan2.1-1.3B) to 1/54 (HunyuanVideo) of a step. `final_block_share` counts, with
`lbdist.evaluate.cost.count_flops` on the CPU, the FLOPs of one transformer forward at the toy's call size
(64x64, 9 frames, the first guidance branch) and those of its final block and head (`norm_out`,
`proj_out`), from hooks on those modules inside the one forward. `weight_bytes` adds up parameters as a
trained toy is exported (transformer and VAE in bf16, the small text encoders in fp32). `generation_seconds`
times one full CPU generation (50 steps; Wan with classifier-free guidance) at the demo size.

    python -m lbdist.toy.depth                 # the "deep" toys: FLOP shares and sizes
    python -m lbdist.toy.depth --time          # ... and a CPU generation of each (random weights)
"""
from __future__ import annotations

import argparse
import time

import torch

from .build import CALL_DEFAULTS, FAMILIES, build_pipeline
from .dataset import grammar_words

BF16_COMPONENTS = ("transformer", "vae")  # exported in bf16; text encoders stay fp32 (transformers keeps dtypes)
DEMO_PROMPT = {"video": "a small red circle moving left and a large blue square growing on a black striped "
                        "background",
               "image": "a small red circle at the left and a large blue square at the right on a black striped "
                        "background"}


def _call(family: str, size: str, steps: int) -> dict:
    kwargs = dict(CALL_DEFAULTS[family][size], num_inference_steps=steps)
    from ..models import get_spec_by_family

    prompt = DEMO_PROMPT["video" if get_spec_by_family(family).is_video else "image"]
    return dict(kwargs, prompt=prompt, generator=torch.Generator().manual_seed(0))


def _block_and_head_hooks(transformer, parts: dict, mode_box: list) -> list:
    """Hooks adding the FLOPs run inside the final block and inside the head modules to `parts`."""
    from ..models import get_spec

    spec = get_spec(transformer)
    watched = {"final_block": [spec.final_block(transformer)],
               "head": [m for m in (getattr(transformer, "norm_out", None), transformer.proj_out) if m is not None],
               "other_blocks": spec.blocks(transformer)[:-1]}
    handles = []
    for name, modules in watched.items():
        for module in modules:
            start = {}

            def pre(m, args, start=start):
                if mode_box:
                    start["flops"] = mode_box[0].flops

            def post(m, args, out, name=name, start=start):
                if mode_box and "flops" in start:
                    parts[name] += mode_box[0].flops - start.pop("flops")

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def final_block_share(family: str, size: str = "deep", pipe=None) -> dict:
    """FLOPs of one transformer forward at the call size, and the share of the final block plus the head.

    Returns `total`, `final_block`, `head`, `other_blocks` (FLOPs), `share` = (final_block + head) / total and
    `bridged_share` = share of a bridged step (everything except the skipped blocks).
    """
    from ..evaluate.cost import count_flops

    pipe = pipe or build_pipeline(family, size, words=grammar_words("v2"))
    transformer = pipe.transformer
    parts = {"total": 0, "final_block": 0, "head": 0, "other_blocks": 0}
    mode_box: list = []

    def enter(module, args, kwargs):
        if parts["total"] == 0 and not mode_box:
            mode_box.append(count_flops().__enter__())

    def leave(module, args, kwargs, out):
        if mode_box:
            mode = mode_box.pop()
            mode.__exit__(None, None, None)
            parts["total"] = mode.flops

    handles = [transformer.register_forward_pre_hook(enter, with_kwargs=True),
               transformer.register_forward_hook(leave, with_kwargs=True)]
    handles += _block_and_head_hooks(transformer, parts, mode_box)
    try:
        with torch.no_grad():
            pipe(**_call(family, size, steps=1), output_type="latent")
    finally:
        for handle in handles:
            handle.remove()
    share = (parts["final_block"] + parts["head"]) / parts["total"]
    bridged = (parts["total"] - parts["other_blocks"]) / parts["total"]
    return {**parts, "share": share, "bridged_share": bridged, "blocks": len(_blocks(transformer))}


def _blocks(transformer) -> list:
    from ..models import get_spec

    return get_spec(transformer).blocks(transformer)


def weight_bytes(family: str, size: str = "deep", pipe=None) -> dict:
    """Parameters per component and the bytes of the exported pipeline (transformer, VAE bf16; rest fp32)."""
    pipe = pipe or build_pipeline(family, size, words=grammar_words("v2"))
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in pipe.components.items()
              if isinstance(module, torch.nn.Module)}
    exported = sum(n * (2 if name in BF16_COMPONENTS else 4) for name, n in params.items())
    return {"params": params, "exported_bytes": exported, "all_bf16_bytes": 2 * sum(params.values())}


def generation_seconds(family: str, size: str = "deep", steps: int = 50, pipe=None) -> float:
    """Wall-clock seconds of one CPU generation at the call size with `steps` steps (decoding included)."""
    pipe = pipe or build_pipeline(family, size, words=grammar_words("v2"))
    with torch.no_grad():
        pipe(**_call(family, size, steps=1), output_type="np")  # warm-up
        start = time.perf_counter()
        pipe(**_call(family, size, steps=steps), output_type="np")
    return time.perf_counter() - start


def report(size: str = "deep", timed: bool = False) -> dict:
    """Every family's share, size and (optionally) CPU time, printed as a table and returned."""
    rows = {}
    print(f"{'family':14} {'blocks':>6} {'final+head':>10} {'bridged':>8} {'params':>9} {'exported':>9} {'cpu s':>6}")
    for family in FAMILIES:
        pipe = build_pipeline(family, size, words=grammar_words("v2"))
        share, weights = final_block_share(family, size, pipe), weight_bytes(family, size, pipe)
        seconds = generation_seconds(family, size, pipe=pipe) if timed else float("nan")
        rows[family] = {"share": share, "weights": weights, "cpu_seconds": seconds}
        print(f"{family:14} {share['blocks']:6d} {share['share']:10.4f} {share['bridged_share']:8.4f} "
              f"{sum(weights['params'].values()) / 1e6:8.2f}M {weights['exported_bytes'] / 1e6:7.2f}MB {seconds:6.2f}")
    total = sum(r["weights"]["exported_bytes"] for r in rows.values())
    print(f"three pipelines exported: {total / 1e6:.2f} MB ({total / 2**20:.2f} MiB)")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="deep")
    parser.add_argument("--time", action="store_true", help="also time one 50-step CPU generation per family")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report(args.size, args.time)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
