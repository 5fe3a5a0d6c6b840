"""lbdist: LearniBridge for diffusers DiTs (Wan2.1, HunyuanVideo, FLUX.1), on one GPU or a Ray cluster.

Importing lbdist starts nothing and imports neither torch nor diffusers: every name below loads its module on
first use.

    from lbdist import Generator, GenerationRequest
    result = Generator("toy:wan").generate(GenerationRequest("a red circle moving left on a black background",
                                                            schedule="5"))
"""
__version__ = "0.1.0"

_LAZY = {
    # generation
    "Generator": ".generation.generator", "GeneratorConfig": ".generation.generator",
    "GenerationRequest": ".generation.request", "GenerationResult": ".generation.request",
    "GenerationCancelled": ".generation.request", "ModelInfo": ".generation.request",
    "load_pipeline": ".generation.loading",
    # bridge
    "Schedule": ".bridge.schedule", "BridgeConfig": ".bridge.config", "AdapterSet": ".bridge.adapter_set",
    "LoraSettings": ".bridge.adapter_set", "CacheLimits": ".bridge.resident",
    "apply_bridge": ".bridge.api", "remove_bridge": ".bridge.api", "enable_bridge": ".bridge.api",
    "disable_bridge": ".bridge.api", "reset_bridge": ".bridge.api", "bridge_stats": ".bridge.api",
    # sequence parallelism outside Ray (torchrun)
    "apply_sequence_parallel": ".parallel.sp", "remove_sequence_parallel": ".parallel.sp",
    "SequenceParallelConfig": ".parallel.sp",
    # performance: CFG-parallel, split VAE decode, compiled blocks (one apply_x each, after the bridge)
    "apply_cfg_parallel": ".parallel.cfg", "CFGParallelConfig": ".parallel.cfg", "apply_parallel_vae": ".parallel.vae",
    "CompileConfig": ".generation.compile", "compile_blocks": ".generation.compile",
    # model families
    "ModelSpec": ".models.spec", "register_spec": ".models",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    from ._lazy import lazy_attribute

    return lazy_attribute(__name__, _LAZY, name)


def __dir__():
    return __all__
