"""Preflight: what is checked against a model before its weights load, and that it agrees with the loaded model.

An early refusal is only right if the early description of the model is the real one: `preflight.model_info`
must equal the `ModelInfo` of the loaded pipeline for every family and every kind of reference, else a valid
request would be refused (or a bad one let through) before loading.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lbdist.generation import GenerationRequest, Generator, GeneratorConfig, load_pipeline, preflight
from lbdist.generation.loading import DTYPES
from lbdist.parallel import DegreeError
from lbdist.parallel.group import WorkerGroup
from helpers import FAMILIES, make_pipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved tiny pipeline of each family, with a defaults file."""
    root = tmp_path_factory.mktemp("folders")
    out = {}
    for family in FAMILIES:
        pipe = make_pipe(family)
        pipe.save_pretrained(root / family)
        (root / family / "lbdist_defaults.json").write_text(json.dumps({"num_inference_steps": 7}))
        out[family] = root / family
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_the_early_model_info_is_the_loaded_models(family, folders):
    for source in (f"tiny:{family}", f"toy:{family}", str(folders[family])):
        early = preflight.model_info(source)
        assert early is not None and early == load_pipeline(source, device="cpu").info, source


def test_the_early_model_is_built_on_the_meta_device_without_reading_weights(folders, monkeypatch):
    import safetensors.torch

    def no_weights(*a, **k):
        raise AssertionError("weights were read")

    monkeypatch.setattr(safetensors.torch, "load_file", no_weights)
    loaded = preflight.skeleton(str(folders["wan"]))
    assert loaded.pipe.transformer.device.type == "meta" and loaded.pipe.vae.device.type == "meta"
    assert loaded.call_defaults == {"num_inference_steps": 7}


def test_a_hub_id_is_read_from_the_local_cache_only(folders, tmp_path, monkeypatch):
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--someone--tiny-wan"
    shutil.copytree(folders["wan"], repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert preflight.transformer_config("someone/tiny-wan")["num_attention_heads"] == 2
    info = preflight.model_info("someone/tiny-wan")
    assert info.family == "wan" and info.defaults["num_inference_steps"] == 50  # the class default: no defaults file
    with pytest.raises(DegreeError, match=r"2 attention heads % ulysses\(3\)"):
        preflight.check_heads("someone/tiny-wan", 3)
    assert preflight.model_info("someone/not-cached") is None  # unknown without the network: checked after loading


def test_what_cannot_be_described_early_is_left_to_the_loaded_model(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "model_index.json").write_text(json.dumps({"_class_name": "NoSuchPipeline"}))
    assert preflight.model_info(str(tmp_path / "odd")) is None
    assert preflight.transformer_config(str(tmp_path / "odd")) is None
    request = GenerationRequest("a", num_frames=4)
    assert preflight.check_request(str(tmp_path / "odd"), request) is request
    assert preflight.model_info("memory://models/x") is None


def test_dtype_names_are_the_loaders():
    assert set(preflight.DTYPE_NAMES) == set(DTYPES) | {"auto"}


class FakeGroup:
    """A worker group that holds the tiny Wan's info and must not be asked to work."""

    def __init__(self, config):
        self.config = config

    def start(self):
        return self

    def load(self, factory, options):
        return {"info": load_pipeline("tiny:wan", device="cpu").info}

    def submit(self, *args):
        raise AssertionError("work was submitted to the ranks")

    def shutdown(self):
        pass


def test_a_group_generator_refuses_tokens_that_do_not_split_before_any_rank_works(monkeypatch):
    monkeypatch.setattr("lbdist.parallel.WorkerGroup", FakeGroup)
    generator = Generator("tiny:wan", GeneratorConfig(sp_degree=2, ring_degree=2))  # ulysses 1: any head count
    with pytest.raises(DegreeError, match=r"1 tokens .* sequence-parallel degree 2"):
        generator.generate(GenerationRequest("a red circle", num_frames=1, num_inference_steps=2))
    with pytest.raises(ValueError, match="request must be a GenerationRequest or a prompt, got dict"):
        generator.generate({"prompt": "a"})


def test_degrees_that_fit_pass_the_preflight_and_reach_the_group(monkeypatch):
    def started(self):
        raise RuntimeError("started")

    monkeypatch.setattr(WorkerGroup, "start", started)
    with pytest.raises(RuntimeError, match="started"):
        Generator("tiny:wan", GeneratorConfig(sp_degree=2))  # 2 heads, ulysses 2


def test_a_broken_defaults_file_is_refused_by_name_before_the_weights_load(folders, tmp_path):
    folder = tmp_path / "wan"
    shutil.copytree(folders["wan"], folder)
    (folder / "lbdist_defaults.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"lbdist_defaults.json: must hold a JSON object of call arguments, got list"):
        load_pipeline(str(folder), device="cpu")


def test_the_cli_refuses_most_mistakes_without_importing_torch(tmp_path):
    code = ("import sys; from lbdist.cli import main; "
            "codes = [main(['generate', '--model', 'tiny:wan', '--prompt', 'a', '--frames', '0', '--out', 'x.mp4']), "
            "main(['demo', '--prompt', 'a purple elephant', '--out', 'd']), "
            "main(['calibrate', '--model', 'tiny:wan', '--prompts', 'none.txt', '--schedule', '5', '--out', 'o'])]; "
            "print(codes, sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip().splitlines()[-1] == "[2, 2, 2] []", out.stderr
    assert not (tmp_path / "d").exists()
