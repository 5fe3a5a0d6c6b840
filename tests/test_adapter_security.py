"""Adapter sets are untrusted input: names confined to the set, digests checked, broken sets refused by name.

Every refusal must be a ValueError naming the file (the manifest or the tensor file) and the problem; a
KeyError, TypeError or safetensors error escaping `AdapterSet.load` fails these tests.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

from lbdist.bridge import AdapterSet, LoraSettings, Schedule, random_adapter_set
from lbdist.bridge.adapter_files import MANIFEST, member_name_problem
from lbdist.bridge.adapter_set import FORMAT_VERSION, UncheckedAdapterSetWarning
from lbdist.models import get_spec
from tests.conftest import make_pipe

SCHEDULE = Schedule.periodic(7, 3)  # bridged steps 1, 2, 4, 5


@pytest.fixture(scope="module")
def adapters():
    pipe = make_pipe("flux")
    spec = get_spec(pipe.transformer)
    return random_adapter_set(pipe.transformer, SCHEDULE, lora=LoraSettings(2, 4.0, spec.lora_targets), std=0.1)


@pytest.fixture
def saved(adapters, tmp_path) -> Path:
    directory = tmp_path / "set"
    AdapterSet(adapters.family, adapters.transformer_class, adapters.config_digest, adapters.schedule,
               adapters.branches, adapters.lora, dict(adapters.weights), dict(adapters.extra)).save(directory)
    return directory


def edit(directory: Path, change) -> Path:
    manifest = json.loads((directory / MANIFEST).read_text())
    change(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory / MANIFEST


def rewrite_file(directory: Path, name: str, data: bytes) -> None:
    """Replace a bridge file and fix its digest in the manifest, so only the new content is wrong."""
    (directory / name).write_bytes(data)
    import hashlib

    def fix(m):
        for entry in m["bridges"]:
            if entry["file"] == name:
                entry["sha256"] = hashlib.sha256(data).hexdigest()
    edit(directory, fix)


def test_a_saved_set_has_digests_and_loads_back_exactly(adapters, saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert all(len(e["sha256"]) == 64 for e in manifest["bridges"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = AdapterSet.load(saved)
    assert sorted(loaded.weights) == sorted(adapters.weights)
    for key, state in adapters.weights.items():
        assert all(torch.equal(state[k], loaded.weights[key][k]) for k in state)
    assert loaded.extra == {"random": True}


@pytest.mark.parametrize("name,problem", [
    ("../other/step001_cond.safetensors", "contains '..'"),
    ("../../../../etc/passwd", "contains '..'"),
    ("sub/../step001_cond.safetensors", "contains '..'"),
    ("/etc/passwd", "absolute path"),
    ("C:\\sets\\step001_cond.safetensors", "drive letter"),
    ("C:step001_cond.safetensors", "drive letter"),
    ("\\\\server\\share\\step001_cond.safetensors", "UNC path"),
    ("//server/share/step001_cond.safetensors", "UNC path"),
    ("sub\\step001_cond.safetensors", "backslash"),
    ("sub/step001_cond.safetensors", "sub-directory"),
    ("lbdist_adapters.json", "not a .safetensors file"),
    ("", "non-empty string"),
    (7, "non-empty string"),
    ("step\x00.safetensors", "control character"),
])
def test_a_manifest_naming_a_file_outside_the_set_is_refused_naming_the_entry(saved, name, problem):
    path = edit(saved, lambda m: m["bridges"][2].update(file=name))
    with pytest.raises(ValueError) as info:
        AdapterSet.load(saved)
    message = str(info.value)
    assert f"{path}: bridges[2]: file {name!r} is refused" in message and problem in message


def test_an_absolute_path_to_another_sets_real_file_is_refused(saved, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(saved, other)  # same weights, same digests: only the name rule stops it
    target = str(other / "step001_cond.safetensors")
    edit(saved, lambda m: m["bridges"][0].update(file=target))
    with pytest.raises(ValueError, match=rf"bridges\[0\]: file '{target}' is refused: it is an absolute path"):
        AdapterSet.load(saved)


def test_a_symlink_resolving_outside_the_set_is_refused_and_one_inside_is_followed(saved, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(saved / "step002_cond.safetensors", outside)  # identical bytes, so the digest would match
    (saved / "step002_cond.safetensors").unlink()
    (saved / "step002_cond.safetensors").symlink_to(outside)
    with pytest.raises(ValueError, match=r"bridges\[1\]: file 'step002_cond.safetensors' is refused: it is a "
                                         r"symlink resolving outside the set"):
        AdapterSet.load(saved)
    (saved / "step002_cond.safetensors").unlink()
    shutil.move(outside, saved / "kept.safetensors")
    (saved / "step002_cond.safetensors").symlink_to("kept.safetensors")
    assert (2, "cond") in AdapterSet.load(saved).weights


def test_a_changed_tensor_file_fails_its_digest_naming_the_file_and_both_digests(saved):
    expected = json.loads((saved / MANIFEST).read_text())["bridges"][3]["sha256"]
    path = saved / "step005_cond.safetensors"
    state = AdapterSet.load(saved).weights[(5, "cond")]
    data = safetensors_bytes({k: v + 1 for k, v in state.items()})  # a valid file with other weights
    path.write_bytes(data)
    import hashlib

    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError) as info:
        AdapterSet.load(saved)
    assert str(info.value).startswith(f"{path}: sha256 mismatch: the manifest says {expected}, the file has {actual}")


def test_a_format_1_set_loads_with_a_warning_that_it_is_unchecked(adapters, saved):
    def to_v1(m):
        m["format_version"] = 1
        for entry in m["bridges"]:
            del entry["sha256"]
    edit(saved, to_v1)
    with pytest.warns(UncheckedAdapterSetWarning, match=r"format_version 1 has no file digests"):
        loaded = AdapterSet.load(saved)
    assert sorted(loaded.weights) == sorted(adapters.weights)
    loaded.save(saved)  # re-saving writes format 2 with digests
    assert json.loads((saved / MANIFEST).read_text())["format_version"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        AdapterSet.load(saved)


def _bytes(state):
    return safetensors_bytes({k: v.contiguous() for k, v in state.items()})


BROKEN_MANIFESTS = [
    ("no bridges", lambda m: m.pop("bridges"), "no 'bridges' field"),
    ("bridges not a list", lambda m: m.update(bridges={"step": 1}), "'bridges' must be a list"),
    ("entry not an object", lambda m: m["bridges"].__setitem__(0, "step001_cond.safetensors"),
     "bridges[0] must be an object"),
    ("step a string", lambda m: m["bridges"][0].update(step="1"), "bridges[0]: step '1' is not a bridged step"),
    ("step of a full step", lambda m: m["bridges"][0].update(step=3), "bridges[0]: step 3 is not a bridged step"),
    ("unknown branch", lambda m: m["bridges"][0].update(branch="uncond"), "branch 'uncond' is not one of"),
    ("no file", lambda m: m["bridges"][0].pop("file"), "file must be a non-empty string, got None"),
    ("no digest", lambda m: m["bridges"][0].pop("sha256"), "sha256 must be 64 lowercase hex digits, got None"),
    ("short digest", lambda m: m["bridges"][0].update(sha256="abc"), "sha256 must be 64 lowercase hex digits"),
    ("duplicate bridge", lambda m: m["bridges"].append(dict(m["bridges"][0])),
     "bridges[4]: duplicate bridge (step 1, branch 'cond'), also bridges[0]"),
    ("format 3", lambda m: m.update(format_version=3), "format_version 3; this lbdist reads 1 and 2"),
    ("no format", lambda m: m.pop("format_version"), "format_version None"),
    ("no family", lambda m: m.pop("family"), "no 'family' field"),
    ("family a number", lambda m: m.update(family=3), "'family' must be a string, got int"),
    ("schedule garbled", lambda m: m.update(schedule={"num_steps": "x"}), "'schedule' is invalid"),
    ("schedule a list", lambda m: m.update(schedule=[0, 3]), "'schedule' must be an object"),
    ("branches a string", lambda m: m.update(branches="cond"), "'branches' must be a list"),
    ("branch with a slash", lambda m: m.update(branches=["../x"]), "'branches' must be distinct names"),
    ("rank a string", lambda m: m["lora"].update(rank="2"), "'lora' must be {rank: int"),
    ("rank zero", lambda m: m["lora"].update(rank=0), "'lora' is invalid (LoRA rank must be an integer >= 1"),
]


@pytest.mark.parametrize("what,change,problem", BROKEN_MANIFESTS, ids=[c[0] for c in BROKEN_MANIFESTS])
def test_each_broken_manifest_fails_with_a_value_error_naming_the_manifest(saved, what, change, problem):
    path = edit(saved, change)
    with pytest.raises(ValueError) as info:
        AdapterSet.load(saved)
    assert str(info.value).startswith(str(path)) and problem in str(info.value), str(info.value)


def test_a_manifest_that_is_not_json_or_not_an_object_is_refused(saved):
    (saved / MANIFEST).write_text('{"format_version": 2, "bridges": [')
    with pytest.raises(ValueError, match=rf"{saved / MANIFEST}: not valid JSON"):
        AdapterSet.load(saved)
    (saved / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"{saved / MANIFEST}: must hold a JSON object, got list"):
        AdapterSet.load(saved)
    (saved / MANIFEST).unlink()
    with pytest.raises(ValueError, match=rf"{saved} has no {MANIFEST}: not an lbdist adapter set"):
        AdapterSet.load(saved)
    with pytest.raises(ValueError, match=r"is a file, not a directory"):
        AdapterSet.load(saved / "step001_cond.safetensors")


def _broken_files(state):
    key_a = next(k for k in state if k.endswith("lora_A.weight"))
    return [
        ("missing", None, "is missing"),
        ("corrupt header", b"\xff" * 64, "not a readable safetensors file"),
        ("truncated", _bytes(state)[:-10], "not a readable safetensors file"),
        ("empty", b"", "not a readable safetensors file"),
        ("unexpected key", _bytes({**state, "evil.weight": torch.zeros(2, 2)}), "unexpected tensors ['evil.weight']"),
        ("missing key", _bytes({k: v for k, v in state.items() if k != key_a}), f"missing tensors ['{key_a}']"),
        ("wrong rank", _bytes({**state, key_a: torch.zeros(3, state[key_a].shape[1])}),
         f"tensor {key_a} is torch.float32 (3, "),
        ("integer tensor", _bytes({**state, key_a: state[key_a].to(torch.int32)}), f"tensor {key_a} is torch.int32"),
    ]


def test_each_broken_tensor_file_fails_with_a_value_error_naming_the_file(adapters, tmp_path):
    state = adapters.weights[(4, "cond")]
    for what, data, problem in _broken_files(state):
        directory = tmp_path / what.replace(" ", "_")
        adapters.save(directory)
        path = directory / "step004_cond.safetensors"
        if data is None:
            path.unlink()
        else:
            rewrite_file(directory, path.name, data)
        with pytest.raises(ValueError) as info:
            AdapterSet.load(directory)
        assert str(path) in str(info.value) and problem in str(info.value), (what, str(info.value))


def test_partial_coverage_is_refused_listing_the_bridges_unless_allowed(adapters):
    partial = AdapterSet(adapters.family, adapters.transformer_class, adapters.config_digest, adapters.schedule,
                         adapters.branches, adapters.lora,
                         {k: v for k, v in adapters.weights.items() if k[0] in (1, 5)})
    assert adapters.check_coverage(SCHEDULE, ("cond",)) == []
    assert adapters.coverage_report(SCHEDULE, ("cond",)) == "calibrated: all 4 bridges"
    with pytest.raises(ValueError) as info:
        partial.check_coverage(SCHEDULE, ("cond",))
    assert str(info.value).startswith("adapter set covers 2 of 4 bridges of periodic:3 over 7 steps; "
                                      "uncovered: steps 2, 4 (cond). They would run uncalibrated")
    assert partial.check_coverage(SCHEDULE, ("cond",), allow_uncovered=True) == [(2, "cond"), (4, "cond")]
    assert partial.coverage_report(SCHEDULE, ("cond",)) == \
        "calibrated: steps 1, 5 (cond); uncalibrated: steps 2, 4 (cond)"
    # a branch the pipeline runs but the set has no adapters for is uncovered too
    assert adapters.check_coverage(SCHEDULE, ("cond", "uncond"), allow_uncovered=True) == \
        [(1, "uncond"), (2, "uncond"), (4, "uncond"), (5, "uncond")]
    with pytest.raises(ValueError, match=r"covers 4 of 8 bridges .* uncovered: steps 1-2, 4-5 \(uncond\)"):
        adapters.check_coverage(SCHEDULE, ("cond", "uncond"))


def test_a_set_loads_from_an_fsspec_uri_with_the_same_checks(saved):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for path in saved.iterdir():
        fs.pipe_file(f"/lbdist-test-set/{path.name}", path.read_bytes())
    try:
        assert len(AdapterSet.load("memory://lbdist-test-set").weights) == 4
        manifest = json.loads(fs.cat_file("/lbdist-test-set/" + MANIFEST))
        manifest["bridges"][0]["file"] = "../elsewhere/step001_cond.safetensors"
        fs.pipe_file("/lbdist-test-set/" + MANIFEST, json.dumps(manifest).encode())
        with pytest.raises(ValueError, match=r"memory://lbdist-test-set/lbdist_adapters.json: bridges\[0\]: file "
                                             r"'../elsewhere/step001_cond.safetensors' is refused"):
            AdapterSet.load("memory://lbdist-test-set")
    finally:
        fs.rm("/lbdist-test-set", recursive=True)


def _fake_hub_snapshot(saved: Path, cache: Path) -> Path:
    """The Hub client's cache layout: snapshot files are symlinks into the repo's blobs folder."""
    repo = cache / "models--someone--their-set"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in saved.iterdir():
        blob = repo / "blobs" / f"blob-{path.name}"
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


def test_a_hub_set_loads_through_its_cache_symlinks_but_not_outside_its_repo(saved, tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = _fake_hub_snapshot(saved, tmp_path / "hub")
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(snapshot)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    assert len(AdapterSet.load("someone/their-set").weights) == 4
    assert calls[0][0] == "someone/their-set" and calls[0][1]["allow_patterns"] == ["*.json", "*.safetensors"]
    escape = tmp_path / "escape.safetensors"
    shutil.copy(saved / "step001_cond.safetensors", escape)
    (snapshot / "step001_cond.safetensors").unlink()
    (snapshot / "step001_cond.safetensors").symlink_to(escape)
    with pytest.raises(ValueError, match=r"^someone/their-set/lbdist_adapters.json: bridges\[0\]: file "
                                         r"'step001_cond.safetensors' is refused: it is a symlink resolving outside"):
        AdapterSet.load("someone/their-set")


def test_member_names_written_by_save_are_the_only_kind_accepted():
    assert member_name_problem("step001_cond.safetensors") is None
    assert member_name_problem("..safetensors") is None  # a plain (if odd) name inside the set
    assert member_name_problem(".safetensors") is not None
    assert member_name_problem("..") is not None and member_name_problem(".") is not None


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30), st.builds(lambda a, b: a + b + ".safetensors",
                                                  st.sampled_from(["", "/", "../", "..\\", "C:", "\\\\h\\", "a/"]),
                                                  st.text(max_size=10))))
def test_a_name_is_accepted_only_if_it_is_a_plain_file_name(name):
    problem = member_name_problem(name)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert "/" not in name and "\\" not in name and name not in (".", "..") and not os.path.isabs(name)
        assert os.path.basename(name) == name and name.endswith(".safetensors")
