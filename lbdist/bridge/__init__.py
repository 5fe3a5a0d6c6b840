"""LearniBridge inference: schedules, adapter sets, and the hooks that bridge a pipeline's transformer."""
from .adapter_set import AdapterSet, LoraSettings, config_digest, random_adapter_set
from .api import bridge_stats, disable_bridge, enable_bridge, get_bridge, reset_bridge
from .schedule import Schedule, StepPlan

__all__ = ["AdapterSet", "LoraSettings", "Schedule", "StepPlan", "bridge_stats", "config_digest",
           "disable_bridge", "enable_bridge", "get_bridge", "random_adapter_set", "reset_bridge"]
