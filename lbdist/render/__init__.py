"""Batch rendering: a prompts file (txt or jsonl) to videos or images, over Ray Data `map_batches` with an actor
pool of `Generator`s, with stable ids, resumable runs and a manifest.

    from lbdist.render import RenderConfig, render
    report = render("prompts.jsonl", "out/batch", "tiny:wan", RenderConfig(actors=(1, 2)))

`choose_layout` picks actors x SP degree for a cluster, a model and a job size. Importing this package imports
neither Ray nor torch.
"""
_LAZY = {
    "render": ".batch", "RenderConfig": ".batch", "RenderReport": ".batch",
    "read_prompts": ".prompts", "parse_prompts": ".prompts", "RenderItem": ".prompts", "LineError": ".prompts",
    "PromptFile": ".prompts", "request_id": ".prompts",
    "Manifest": ".manifest",
    "choose_layout": ".layout", "Layout": ".layout", "ModelFootprint": ".layout",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    from .._lazy import lazy_attribute

    return lazy_attribute(__name__, _LAZY, name)
