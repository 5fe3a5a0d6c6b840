"""Measuring accelerated generation: the logic every benchmark in tools/ shares (the tools only sweep and print).

    metrics.py        PSNR, SSIM, relative L2, interpolation at equal speedup
    cost.py           CostMeter: transformer calls, FLOPs, block / attention / FFN evaluations actually run
    peers.py          METHODS: LearniBridge and its peers (diffusers' caches, fewer steps), one knob each
    report.py         fidelity cells -> curves, comparison against a bar, markdown table, plots
    realsize.py       real-size random-weight transformers and pipelines from `ModelSpec.real_sizes`, step inputs
    timing.py         CUDA-synchronised median timing, the denoising loop, environment record, JSON writing
    bridge_speed.py   full / final-block step costs, ceilings, bridged loops (tools/bench_bridge.py)
    speed.py          LearniBridge against diffusers' caches on real sizes, whole-pipeline timing (bench_speed)
    fidelity.py       the fidelity sweep on small models through `Engine`, resumable cells (bench_fidelity)
    generalisation.py calibration-prompt vs held-out error of calibrated adapters (check_generalisation)
    calibration_cost.py  recording and training cost on real sizes (bench_calibrate)
    sp_bench.py       sequence parallelism x bridge in Ray worker groups (bench_sp), rank side and driver
    sp_report.py      bench_sp's derived numbers, comparison against given targets, merging split runs, table
    perf.py           issue 15: CFG-parallel / Ulysses layouts, compiled blocks, whole pipeline, VAE decode (bench_perf)
    perf_report.py    bench_perf's derived numbers, targets met or missed, merging calls, tables
    distcal.py        issue 12: calibration cost cut on the toys, distributed recording / training / ZeRO memory
                      (bench_distcal)

Names load their modules on first use (importing `lbdist.evaluate` imports no torch).

    from lbdist.evaluate import METHODS, CostMeter, psnr, ssim, relative_l2
"""
_LAZY = {
    "CostMeter": ".cost", "count_flops": ".cost",
    "interpolate_curve": ".metrics", "psnr": ".metrics", "relative_l2": ".metrics", "ssim": ".metrics",
    "METHODS": ".peers", "MethodSetup": ".peers", "PeerSettings": ".peers", "calibrate_mag_ratios": ".peers",
    "get_method": ".peers",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    from .._lazy import lazy_attribute

    return lazy_attribute(__name__, _LAZY, name)
