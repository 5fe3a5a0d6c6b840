"""LearniBridge inference: schedules, the bridge config and hooks, adapter sets and their resident cache.

Names load their modules on first use (`lbdist.bridge.schedule` alone imports no torch), so request validation
can parse schedules before any model library is imported.
"""
_LAZY = {
    "AdapterSet": ".adapter_set", "LoraSettings": ".adapter_set", "config_digest": ".adapter_set",
    "random_adapter_set": ".adapter_set",
    "apply_bridge": ".api", "bridge_stats": ".api", "check_coverage": ".api", "disable_bridge": ".api",
    "enable_bridge": ".api", "get_bridge": ".api", "remove_bridge": ".api", "reset_bridge": ".api",
    "BridgeConfig": ".config", "AdapterCache": ".resident", "CacheLimits": ".resident",
    "Schedule": ".schedule", "StepPlan": ".schedule",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    from .._lazy import lazy_attribute

    return lazy_attribute(__name__, _LAZY, name)
