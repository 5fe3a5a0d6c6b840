"""lbdist: LearniBridge for diffusers DiTs (Wan2.1, HunyuanVideo, FLUX.1), on one GPU or a Ray cluster.

Importing lbdist starts nothing (no Ray, no process group); the heavy pieces import lazily.
"""
__version__ = "0.1.0"

from .bridge import (  # noqa: E402
    AdapterSet,
    LoraSettings,
    Schedule,
    bridge_stats,
    disable_bridge,
    enable_bridge,
    reset_bridge,
)

__all__ = ["AdapterSet", "LoraSettings", "Schedule", "__version__", "bridge_stats", "disable_bridge",
           "enable_bridge", "reset_bridge"]
