"""Generation: requests and results, the in-process `Engine`, and the `Generator` every front end calls."""
from .request import GenerationCancelled, GenerationRequest, GenerationResult, ModelInfo

__all__ = ["Engine", "GenerationCancelled", "GenerationRequest", "GenerationResult", "Generator", "GeneratorConfig",
           "LoadedPipeline", "ModelInfo", "load_pipeline"]

_LAZY = {"Engine": ".engine", "Generator": ".generator", "GeneratorConfig": ".generator",
         "LoadedPipeline": ".loading", "load_pipeline": ".loading"}


def __getattr__(name: str):
    from .._lazy import lazy_attribute

    return lazy_attribute(__name__, _LAZY, name)
