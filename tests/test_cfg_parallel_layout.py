"""The layout rule (`lbdist.parallel.layout.choose_group_layout`) as a table, its errors, and what it reads from models.

Rule: CFG first (cfg 2 for a two-branch model on an even group), then Ulysses as far as the head count allows
(gcd of the ranks left and the heads), then ring for the rest; degrees given explicitly are kept.
"""
from __future__ import annotations

import re

import pytest

from lbdist.parallel import DegreeError, PipelineFactory
from lbdist.parallel.layout import GroupLayout, ModelShape, choose_group_layout, describe

WAN_14B = ModelShape("wan", branches=2, heads=40)          # Wan2.1-14B: true CFG, 40 heads
WAN_1_3B = ModelShape("wan", branches=2, heads=12)         # Wan2.1-1.3B: true CFG, 12 heads
HUNYUAN = ModelShape("hunyuan_video", branches=1, heads=24)  # guidance-distilled: one branch
FLUX = ModelShape("flux", branches=1, heads=24)

TABLE = [  # world, model, explicit degrees, (cfg, ulysses, ring)
    (1, WAN_14B, {}, (1, 1, 1)),
    (2, WAN_14B, {}, (2, 1, 1)),
    (4, WAN_14B, {}, (2, 2, 1)),
    (8, WAN_14B, {}, (2, 4, 1)),
    (3, WAN_14B, {}, (1, 1, 3)),       # odd group: no CFG split; 40 % 3 != 0: all ring
    (6, WAN_1_3B, {}, (2, 3, 1)),
    (16, WAN_1_3B, {}, (2, 4, 2)),     # 8 ranks per half, 12 heads: Ulysses 4, ring 2
    (2, HUNYUAN, {}, (1, 2, 1)),
    (8, HUNYUAN, {}, (1, 8, 1)),
    (16, HUNYUAN, {}, (1, 8, 2)),
    (8, FLUX, {}, (1, 8, 1)),
    (4, None, {}, (1, 4, 1)),          # unknown model: all Ulysses, as before CFG-parallel
    (4, WAN_14B, {"cfg": 1}, (1, 4, 1)),
    (8, WAN_14B, {"ulysses": 2}, (2, 2, 2)),
    (4, WAN_14B, {"ring": 2}, (2, 1, 2)),
    (4, WAN_14B, {"ulysses": 4}, (1, 4, 1)),  # the fixed degrees leave no room for a CFG split
    (2, HUNYUAN, {"cfg": 2}, (2, 1, 1)),      # asked for (true CFG requests); the rule would not pick it
]


@pytest.mark.parametrize("world, model, fixed, expected", TABLE)
def test_layout_table(world, model, fixed, expected):
    layout = choose_group_layout(world, model, **fixed)
    assert (layout.cfg, layout.ulysses, layout.ring) == expected
    assert layout.world == world


@pytest.mark.parametrize("call, error, message", [
    (lambda: choose_group_layout(8, WAN_14B, cfg=2, ulysses=2, ring=1), ValueError,
     "cfg(2) * ulysses(2) * ring(1) = 4 != world_size(8)"),
    (lambda: choose_group_layout(8, WAN_14B, ulysses=3), ValueError, "is not divisible by ulysses(3)"),
    (lambda: choose_group_layout(6, WAN_14B, ulysses=6, cfg=1), DegreeError, "40 attention heads % ulysses(6) = 4"),
    (lambda: choose_group_layout(4, ModelShape("wan", 2, 40, tokens=6), cfg=1), DegreeError,
     "6 tokens at the default size cannot be split evenly over ulysses(4) * ring(1) = 4 ranks: 6 % 4 = 2"),
    (lambda: choose_group_layout(4, WAN_14B, cfg=4), ValueError, "cfg_degree must be one of (1, 2)"),
    (lambda: choose_group_layout(0, WAN_14B), ValueError, "world_size must be an integer >= 1, got 0"),
    (lambda: GroupLayout(cfg=2, ulysses=2).check(8), ValueError, "cfg(2) * ulysses(2) * ring(1) = 4 != world_size(8)"),
])
def test_errors_print_the_arithmetic(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_generator_config_checks_degrees_before_anything_starts():
    from lbdist import GeneratorConfig

    with pytest.raises(ValueError, match=re.escape("cfg(2) * ulysses(2) * ring(1) = 4 != world_size(8)")):
        GeneratorConfig(sp_degree=8, cfg_degree=2, ulysses_degree=2, ring_degree=1)
    config = GeneratorConfig(sp_degree=4)
    assert config.layout() == GroupLayout(1, 4, 1)              # model unknown: degrees alone
    assert config.layout("tiny:wan") == GroupLayout(2, 2, 1)    # two branches, 2 heads
    group = config.group_config("tiny:wan")
    assert (group.cfg_degree, group.ulysses_degree, group.ring_degree, group.parallel_vae) == (2, 2, 1, True)


def test_describe_reads_model_references_without_loading_weights(tmp_path):
    assert describe("tiny:wan") == ModelShape("wan", 2, 2)
    assert describe("tiny:flux") == ModelShape("flux", 1, 2)
    toy = describe("toy:wan")
    assert toy is not None and toy.branches == 2 and toy.heads == 4
    from lbdist.toy.bundled import toy_path
    assert describe(str(toy_path("wan"))) == toy                      # a local pipeline folder
    assert describe(PipelineFactory("lbdist.generation.loading:load_pipeline", {"source": "tiny:wan"})) \
        == ModelShape("wan", 2, 2)
    assert describe(PipelineFactory("lbdist.toy.build:build_pipeline", {"family": "wan"})) is None
    assert describe(str(tmp_path)) is None                           # not a pipeline folder
    assert describe("nobody/no-such-model") is None                  # not cached: the rule falls back
