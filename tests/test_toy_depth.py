"""The deep toys are shaped like the real models: >= 20 blocks (double : single stream about 1 : 2), the final
block plus the output head <= 1/20 of a forward in FLOPs, and the three pipelines <= 30 MB as exported."""
from __future__ import annotations

import pytest

from lbdist.toy.build import FAMILIES, TRANSFORMER_CONFIGS, build_pipeline
from lbdist.toy.dataset import grammar_words
from lbdist.toy.depth import final_block_share, weight_bytes

MAX_SHARE = 1 / 20
MAX_BYTES = 30 * 10 ** 6


@pytest.fixture(scope="module")
def deep_pipes():
    return {family: build_pipeline(family, "deep", words=grammar_words("v2")) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_deep_toy_has_enough_blocks_in_the_real_ratio(family):
    config = TRANSFORMER_CONFIGS[family]["deep"]
    double, single = config["num_layers"], config.get("num_single_layers", 0)
    assert double + single >= 20
    if single:
        assert single / double == pytest.approx(2.0, rel=0.1)  # HunyuanVideo 20:40, FLUX 19:38


@pytest.mark.parametrize("family", FAMILIES)
def test_final_block_and_head_cost_at_most_a_twentieth(family, deep_pipes):
    share = final_block_share(family, "deep", deep_pipes[family])
    print(f"{family}: final block + head {share['share']:.4f} of {share['total'] / 1e9:.3f} GFLOP, "
          f"bridged step {share['bridged_share']:.4f}")
    assert share["final_block"] > 0 and share["head"] > 0 and share["other_blocks"] > 0
    assert share["share"] <= MAX_SHARE
    assert share["share"] < share["bridged_share"] < 2 * MAX_SHARE


def test_the_three_deep_toys_weigh_at_most_30_mb(deep_pipes):
    sizes = {family: weight_bytes(family, "deep", pipe) for family, pipe in deep_pipes.items()}
    total = sum(s["exported_bytes"] for s in sizes.values())
    print({family: round(s["exported_bytes"] / 1e6, 2) for family, s in sizes.items()}, f"total {total / 1e6:.2f} MB")
    assert total <= MAX_BYTES
    assert sum(s["all_bf16_bytes"] for s in sizes.values()) <= total
