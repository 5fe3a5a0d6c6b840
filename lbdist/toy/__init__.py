"""Small real-class pipelines (test fixtures, bundled toy models) and what they are trained and judged on.

`build.py` builds pipelines from the real diffusers classes, `dataset.py` renders the procedural data set,
`metric.py` scores prompt adherence, `train.py` trains a toy model, `bundled.py` loads the shipped ones.
"""
from .bundled import WEIGHTS_DIR, Toy, load_toy, toy_path

__all__ = ["WEIGHTS_DIR", "Toy", "load_toy", "toy_path"]
