"""tools/train_toy.py --quick runs every phase end to end on the CPU, and its output loads offline."""
from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from lbdist.toy.build import FAMILIES
from lbdist.toy.bundled import PIPELINE_CLASSES, load_toy
from lbdist.toy.train import TrainConfig

TOOL = Path(__file__).resolve().parents[1] / "tools" / "train_toy.py"


@pytest.mark.parametrize("family", FAMILIES)
def test_quick_training_writes_a_loadable_pipeline(family, tmp_path, monkeypatch, capsys):
    out = tmp_path / family
    monkeypatch.setattr(sys, "argv", ["train_toy.py", "--family", family, "--quick", "--device", "cpu",
                                      "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(TOOL), run_name="__main__")
    assert exit_info.value.code == 0
    assert "SUMMARY" in capsys.readouterr().out
    for name in ("model_index.json", "lbdist_defaults.json", "lbdist_eval.json", "samples.png"):
        assert (out / name).is_file(), name
    assert list((out / "transformer").glob("*.safetensors"))
    report = json.loads((out / "lbdist_eval.json").read_text())
    assert report["transformer_steps"] >= 1 and report["vae_steps"] >= 1
    assert 0.0 <= report["heldout_adherence"] <= 1.0
    pipe, defaults = load_toy(family, path=out)  # the real pipeline class, from_pretrained, offline
    assert type(pipe).__name__ == PIPELINE_CLASSES[family]
    for key, value in report["latent_stats"].items():  # the trained VAE's statistics travel with it
        assert pipe.vae.config[key] == pytest.approx(value)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary directory was renamed away
    assert (tmp_path / f"{family}.ckpt.pt").is_file()


@pytest.mark.parametrize("field,value", [("family", "sd3"), ("minutes", 0.0), ("vae_fraction", 1.5),
                                         ("batch", 0), ("refresh", 10**6)])
def test_bad_training_config_names_the_value(field, value):
    kwargs = {"family": "wan", "out": "x", field: value}
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)
