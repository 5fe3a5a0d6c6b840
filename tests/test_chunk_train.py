"""The chunked v2 trainer on the CPU at size "tiny": a chunk writes a checkpoint and a progress record, the next
chunk resumes from it, the export loads offline; one process per family; guards and validation."""
from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from lbdist.toy import chunks
from lbdist.toy.build import FAMILIES, build_pipeline
from lbdist.toy.bundled import PIPELINE_CLASSES, load_toy
from lbdist.toy.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from lbdist.toy.chunk_train import ChunkConfig, to_bf16
from lbdist.toy.cuda_guard import sdpa_context
from lbdist.toy.dataset import DataConfig
from lbdist.toy.evaluate import generate

V2_ATTRIBUTES = {"background", "texture", "count", "colour", "shape", "size"}


def _run(tmp_path, *families, extra=()):
    argv = ["--quick", "--device", "cpu", "--ckpt-dir", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"),
            "--families", *families, *extra]
    assert chunks.main(argv) == 0
    return json.loads((tmp_path / "ckpt" / "progress.json").read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_chunk_checkpoints_and_the_next_resumes(family, tmp_path, capsys):
    first = _run(tmp_path, family)[family]
    ckpt = torch.load(checkpoint_path(tmp_path / "ckpt", family), weights_only=False)
    assert ckpt["vae_done"] and ckpt["steps"] == 3 and ckpt["chunks"] == 1 and ckpt["latent_stats"]
    assert all(v.dtype == torch.bfloat16 for v in ckpt["transformer"].values() if v.is_floating_point())
    assert "ema" not in ckpt and "opt" not in ckpt  # compact by default
    record = first["chunks"][0]
    assert record["chunk"] == 0 and record["steps"] == 3 and record["steps_per_s"] > 0
    assert V2_ATTRIBUTES <= set(record["heldout_per_attribute"])
    assert {"motion" if family != "flux" else "position"} <= set(record["heldout_per_attribute"])
    assert 0.0 <= record["heldout_adherence"] <= 1.0 and record["card"] == "cpu" and not first["done"]

    second = _run(tmp_path, family)[family]  # the same command again: resumes
    assert [c["steps"] for c in second["chunks"]] == [3, 6] and [c["chunk"] for c in second["chunks"]] == [0, 1]
    assert f"[{family} chunk 1" in capsys.readouterr().out
    resumed = torch.load(checkpoint_path(tmp_path / "ckpt", family), weights_only=False)
    assert resumed["steps"] == 6 and resumed["vae_steps"] == ckpt["vae_steps"] == 2  # VAE trained once
    assert any(not torch.equal(resumed["transformer"][k], v) for k, v in ckpt["transformer"].items())

    out = tmp_path / "out" / family
    pipe, defaults = load_toy(family, path=out)
    assert type(pipe).__name__ == PIPELINE_CLASSES[family] and defaults["max_sequence_length"] == 24
    stored = safetensors.torch.load_file(next((out / "transformer").glob("*.safetensors")))
    assert torch.bfloat16 in {t.dtype for t in stored.values()}
    prompt = "a small red circle moving left on a plain black background" if family != "flux" else \
        "a small red circle at the left on a plain black background"
    sample = generate(pipe, [prompt], defaults, seed=0, num_inference_steps=2)[0]
    assert sample.shape[-3:] == (32, 32, 3)


def test_a_family_that_met_the_bar_is_skipped(tmp_path, capsys):
    _run(tmp_path, "wan")
    path = tmp_path / "ckpt" / "wan.progress.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "done": True}))
    assert _run(tmp_path, "wan")["wan"]["done"]
    assert "none (all done)" in capsys.readouterr().out


@pytest.mark.slow
def test_one_process_per_family(tmp_path, monkeypatch):
    """The GPU path: workers started as processes, family i on GPU i mod G (here on the CPU)."""
    monkeypatch.setattr(chunks, "_gpu_ids", lambda: ["0", "1"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    argv = ["--quick", "--device", "cpu", "--ckpt-dir", str(ckpt)]
    codes = chunks._spawn(argv, ["wan", "flux"], ckpt, minutes=3.0)
    assert codes == {"wan": 0, "flux": 0}
    for family in ("wan", "flux"):
        assert "SUMMARY" in (ckpt / f"{family}.log").read_text()
        assert checkpoint_path(ckpt, family).is_file()
    assert set(chunks.merge_progress(ckpt, ["wan"])) == {"wan", "flux"}


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    save_checkpoint(tmp_path / "wan.pt", {"family": "wan", "size": "tiny", "seed": 0})
    with pytest.raises(ValueError, match="seed"):
        load_checkpoint(tmp_path / "wan.pt", {"family": "wan", "size": "tiny", "seed": 1})
    assert load_checkpoint(tmp_path / "none.pt", {}) is None


@pytest.mark.parametrize("field,value", [("family", "sd3"), ("data", DataConfig()), ("compile", "fast"),
                                         ("sdpa", "xformers"), ("ckpt_dtype", "fp8"), ("batch", 0),
                                         ("size", "huge"), ("refresh", 10 ** 9), ("reserve_minutes", 9.0)])
def test_bad_chunk_config_names_the_value(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0] if field != "data" else "version"):
        ChunkConfig(**{"family": "wan", "ckpt_dir": "x", field: value})


def test_sdpa_guard_is_for_flux_on_cuda():
    from contextlib import nullcontext

    for family in FAMILIES:
        assert isinstance(sdpa_context(family, "cpu", "auto"), nullcontext)
    assert isinstance(sdpa_context("wan", "cuda", "auto"), nullcontext)
    with sdpa_context("flux", "cuda", "auto"):
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.cudnn_sdp_enabled() and not torch.backends.cuda.mem_efficient_sdp_enabled()
    with pytest.raises(ValueError, match="sdpa"):
        sdpa_context("flux", "cuda", "xformers")


def test_bf16_export_keeps_the_classes_fp32_modules():
    transformer = build_pipeline("wan", "tiny").transformer
    keep = set(transformer._keep_in_fp32_modules)
    to_bf16(transformer)
    for name, p in transformer.named_parameters():
        assert p.dtype == (torch.float32 if keep & set(name.split(".")) else torch.bfloat16), name


def test_resumes_from_what_a_gpu_run_sends_back(tmp_path):
    """A run sends back `<family>.pt` and the merged progress.json only; carried back, they resume the run."""
    _run(tmp_path, "flux")
    (tmp_path / "ckpt" / "flux.progress.json").unlink()
    progress = _run(tmp_path, "flux")["flux"]
    assert [c["steps"] for c in progress["chunks"]] == [3, 6]
