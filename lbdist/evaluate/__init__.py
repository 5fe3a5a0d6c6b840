"""Measuring accelerated generation against full compute: fidelity metrics, executed-cost counters, and the
registry of acceleration methods (LearniBridge and its peers) that the benchmarks in tools/ sweep.

    from lbdist.evaluate import METHODS, CostMeter, psnr, ssim, relative_l2
"""
from .cost import CostMeter, count_flops
from .metrics import interpolate_curve, psnr, relative_l2, ssim
from .peers import METHODS, MethodSetup, PeerSettings, calibrate_mag_ratios, get_method

__all__ = ["METHODS", "CostMeter", "MethodSetup", "PeerSettings", "calibrate_mag_ratios", "count_flops",
           "get_method", "interpolate_curve", "psnr", "relative_l2", "ssim"]
