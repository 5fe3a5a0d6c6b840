"""Small real-class pipelines (test fixtures, bundled toy models) and what they are trained and judged on.

`build.py` builds pipelines from the real diffusers classes, `dataset.py` renders the procedural data set,
`metric.py` scores prompt adherence, `train.py` trains a toy model, `bundled.py` loads the shipped ones.
Data set v2 (issue 14: two objects, sizes, motions, textures): `dataset_v2.py`, `render_v2.py`,
`metric_v2.py`; the deep toys' cost and size: `depth.py`; their chunked, resumable GPU trainer: `chunks.py`
(command line, one process per family), `chunk_train.py` (one chunk), `bank.py` (device-side data),
`checkpoint.py`, `cuda_guard.py` (attention-backend guard and FLUX crash probe).
"""
from .bundled import WEIGHTS_DIR, Toy, load_toy, toy_path

__all__ = ["WEIGHTS_DIR", "Toy", "load_toy", "toy_path"]
