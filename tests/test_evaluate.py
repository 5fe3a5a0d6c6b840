"""lbdist.evaluate: PSNR / SSIM / relative L2 / interpolation, the executed-cost meter, and the peer registry."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from lbdist.evaluate import METHODS, CostMeter, MethodSetup, PeerSettings, calibrate_mag_ratios, get_method
from lbdist.evaluate.cost import FLOP_FORMULAS
from lbdist.evaluate.metrics import interpolate_curve, psnr, relative_l2, ssim
from lbdist.evaluate.peers import hooked_modules
from helpers import call_kwargs, make_pipe


def _frames(seed=0, shape=(3, 24, 24, 3)):
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=shape).astype(np.float32)


def test_identical_frames_give_infinite_psnr_and_unit_ssim():
    x = _frames()
    assert psnr(x, x) == math.inf
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert relative_l2(torch.ones(4, 4), torch.ones(4, 4)) == 0.0


def test_psnr_of_known_noise():
    x = _frames()
    noise = np.where(np.indices(x.shape).sum(axis=0) % 2 == 0, 0.1, -0.1).astype(np.float32)  # MSE exactly 0.01
    assert psnr(x + noise, x) == pytest.approx(20.0, abs=1e-4)
    assert psnr(x + noise / 10, x) == pytest.approx(40.0, abs=1e-3)


def test_ssim_of_constant_images_matches_the_closed_form():
    a, b = np.full((16, 16, 3), 0.5), np.full((16, 16, 3), 0.6)
    c1 = (0.01) ** 2  # zero variances: SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    assert ssim(a, b) == pytest.approx((2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1), rel=1e-9)


def test_ssim_falls_with_noise_and_is_symmetric():
    x = _frames(1)
    rng = np.random.default_rng(2)
    small, large = x + rng.normal(0, 0.02, x.shape), x + rng.normal(0, 0.2, x.shape)
    assert 1.0 > ssim(small, x) > ssim(large, x) > 0.0
    assert ssim(small, x) == pytest.approx(ssim(x, small), abs=1e-12)


@pytest.mark.parametrize("call", [lambda: psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3))),
                                  lambda: ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3))),
                                  lambda: relative_l2(torch.ones(2), torch.ones(3))])
def test_bad_metric_inputs_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_relative_l2():
    ref = torch.tensor([3.0, 4.0])
    assert relative_l2(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.1)


def test_interpolation_at_equal_speedup():
    speedups, values = [4.0, 2.0, 6.0, 4.0], [20.0, 30.0, 10.0, 22.0]  # unsorted, a duplicate speedup
    got = interpolate_curve(speedups, values, [2.0, 3.0, 4.0, 5.0, 1.5, 6.5])
    assert got[:4] == pytest.approx([30.0, 25.5, 21.0, 15.5])
    assert got[4] is None and got[5] is None  # outside the measured range: no extrapolation
    assert interpolate_curve([2.0, float("nan")], [1.0, 2.0], [2.0]) == [1.0]
    assert interpolate_curve([], [], [3.0]) == [None]


def _flop_counter_mode_total(pipe, family, custom_mapping) -> int:
    """torch's own FlopCounterMode around every transformer call of one generation (2 steps)."""
    counter, total = FlopCounterMode(display=False, custom_mapping=custom_mapping), [0]

    def post(module, args, kwargs, output):
        counter.__exit__(None, None, None)
        total[0] += counter.get_total_flops()

    def pre(module, args, kwargs):
        counter.__enter__()

    handles = [pipe.transformer.register_forward_pre_hook(pre, with_kwargs=True),
               pipe.transformer.register_forward_hook(post, with_kwargs=True)]
    try:
        pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **call_kwargs(family, 2))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def test_flop_count_matches_flop_counter_mode_and_counts_cpu_attention():
    pipe = make_pipe("wan")
    with CostMeter(pipe.transformer) as meter:
        pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **call_kwargs("wan", 2))
    extra = {k: v for k, v in FLOP_FORMULAS.items() if k not in flop_registry}
    with_attention = _flop_counter_mode_total(pipe, "wan", extra)
    registry_only = _flop_counter_mode_total(pipe, "wan", {})
    assert meter.counts["calls"] == 4  # 2 steps x (cond, uncond)
    assert meter.counts["flops"] == with_attention > registry_only > 0  # torch's registry misses CPU attention
    assert meter.counts["blocks"] == 4 * 4 and meter.counts["attention"] == 4 * 8 and meter.counts["ffn"] == 4 * 4


def test_diffusers_taylorseer_defaults_hook_no_wan_module_but_ours_do():
    from diffusers import TaylorSeerCacheConfig

    pipe = make_pipe("wan")
    pipe.transformer.enable_cache(TaylorSeerCacheConfig())
    assert hooked_modules(pipe.transformer) == {}  # `^blocks.*attn` under re.fullmatch matches neither attn1 nor attn2
    pipe.transformer.disable_cache()
    record = METHODS["taylorseer"].apply(pipe, 2, MethodSetup("wan", 6, ("cond", "uncond")))
    METHODS["taylorseer"].remove(pipe)
    assert record["hooked_modules"] == {"taylorseer_cache": 3 * 4}  # attn1, attn2, ffn of 4 blocks
    assert hooked_modules(pipe.transformer) == {}


@pytest.mark.parametrize("name", ["taylorseer", "taylorseer_lite", "fbcache", "magcache", "pab", "fastercache",
                                  "bridge_uncal", "fewer_steps"])
def test_every_peer_skips_work_on_a_tiny_model(name):
    family, steps = "flux", 6
    pipe = make_pipe(family)
    setup = MethodSetup(family, steps, ("cond",), mag_ratios=(1.0,) * steps)
    method = METHODS[name]
    knob = method.quick_knobs[-1]

    def run(n):
        with CostMeter(pipe.transformer) as meter:
            pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **call_kwargs(family, n))
        return meter.counts

    full = run(steps)
    method.apply(pipe, knob, setup)
    try:
        counts = run(method.steps(knob, setup))
    finally:
        method.remove(pipe)
    assert counts["flops"] < full["flops"]
    assert counts["attention"] < full["attention"]
    assert run(steps) == full  # removed: the model computes as before


def test_attention_caches_refuse_separate_guidance_calls():
    two, one = MethodSetup("wan", 10, ("cond", "uncond")), MethodSetup("wan", 10, ("cond",))
    for name in ("pab", "fastercache"):
        assert "separate transformer calls" in METHODS[name].not_applicable(two)
        assert METHODS[name].not_applicable(one) is None
    with pytest.raises(ValueError, match="does not apply to wan"):
        METHODS["pab"].apply(make_pipe("wan"), 2, two)
    assert "calibrated" in METHODS["learnibridge"].not_applicable(one)
    assert "magnitude ratios" in METHODS["magcache"].not_applicable(one)


def test_why_pab_is_refused_on_wan_its_uncond_calls_reuse_the_cond_attention():
    """The evidence behind `not_applicable`: diffusers' PAB state is per module, not per cache_context."""
    import contextlib

    from diffusers import PyramidAttentionBroadcastConfig

    pipe = make_pipe("wan")
    transformer, branch, computed = pipe.transformer, {"name": None}, []
    original = transformer.cache_context

    @contextlib.contextmanager
    def context(name, **kwargs):
        branch["name"] = name
        with original(name, **kwargs):
            yield

    transformer.cache_context = context
    transformer.blocks[0].attn1.to_q.register_forward_hook(lambda m, a, o: computed.append(branch["name"]))
    transformer.enable_cache(PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 1001),
        spatial_attention_block_identifiers=(r"^blocks\.\d+\.attn1$",), current_timestep_callback=lambda: pipe.current_timestep))
    pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **call_kwargs("wan", 4))
    assert computed == ["cond"] * 4  # every uncond call got the cond call's cached attention output


def test_magcache_ratios_come_from_diffusers_calibration_mode():
    pipe = make_pipe("hunyuan_video")
    calls = []

    def run(prompt, seed):
        calls.append(prompt)
        pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), **call_kwargs("hunyuan_video", 5))

    ratios = calibrate_mag_ratios(run, pipe, ["a red circle", "a blue square"], [0, 1], 5)
    assert len(ratios) == 5 and ratios[0] == 1.0 and all(r > 0 and r != 1.0 for r in ratios[1:])
    assert calls == ["a red circle", "a blue square"]
    assert getattr(pipe.transformer, "_cache_config", None) is None  # calibration hooks removed


@pytest.mark.parametrize("make,match", [
    (lambda: PeerSettings(mag_retention_ratio=1.5), r"mag_retention_ratio must be in \[0, 1\), got 1.5"),
    (lambda: PeerSettings(taylor_factors_dtype="int8"), r"taylor_factors_dtype must be .* got 'int8'"),
    (lambda: PeerSettings(pab_timestep_range=(5, 1)), r"pab_timestep_range must be \(low, high\)"),
    (lambda: MethodSetup("sd3", 10), r"family must be one of .* got 'sd3'"),
    (lambda: MethodSetup("wan", 1), r"steps must be an integer >= 2, got 1"),
    (lambda: get_method("teacache"), r"unknown method 'teacache'; known methods: learnibridge"),
    (lambda: METHODS["fewer_steps"].steps(50, MethodSetup("wan", 50)), r"below the full step count 50, got 50"),
    (lambda: METHODS["bridge_uncal"].apply(make_pipe("flux"), 2.5, MethodSetup("flux", 10)),
     r"interval must be an integer >= 2, got 2.5"),
])
def test_bad_arguments_raise_value_error_naming_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_methods_name_their_request_fields_and_take_module_ids_from_the_specs():
    from lbdist.evaluate.peers import attention_modules, taylorseer_modules
    from lbdist.models import get_spec_by_family

    setup = MethodSetup("wan", 10, ("cond", "uncond"), adapters=lambda n: f"/sets/n{n}")
    assert METHODS["learnibridge"].request(5, setup) == {"schedule": "periodic:5", "adapters": "/sets/n5"}
    assert METHODS["bridge_uncal"].request(5, setup) == {"schedule": "periodic:5"}
    assert METHODS["fewer_steps"].request(4, setup) == {"num_inference_steps": 4}
    assert METHODS["taylorseer"].request(4, setup) == {}
    for family in ("wan", "hunyuan_video", "flux"):
        spec = get_spec_by_family(family)
        assert taylorseer_modules(family) == spec.taylorseer_modules
        assert attention_modules(family) == spec.attention_modules


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-hunyuan-video", "tiny-flux"])
def test_real_size_stand_ins_build_from_their_spec_and_take_the_pipelines_inputs(name):
    from lbdist.evaluate import realsize

    spec, size = realsize.lookup(name)
    model = realsize.build_transformer(name, "cpu", torch.float32)
    latents, kwargs_at = realsize.step_inputs(name, model, "cpu", torch.float32)  # refuses a VAE of other factors
    seen = {}

    def tokens(module, args, kwargs):
        seen["tokens"] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).shape[1]

    spec.final_block(model).register_forward_pre_hook(tokens, with_kwargs=True)
    with torch.no_grad():
        out = model(**kwargs_at(latents, 0.5))[0]
    assert out.shape == latents.shape and torch.isfinite(out).all()
    assert seen["tokens"] == realsize.latent_tokens(name)  # the spec's arithmetic, at the size's VAE factors
    assert "% 2 = 0" in realsize.check_split(name, 2)
