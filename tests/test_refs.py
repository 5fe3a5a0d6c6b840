"""One rule for model and adapter references: paths stay local, only `owner/name` goes to the Hub.

No test here may reach the network: `huggingface_hub.snapshot_download` is replaced by a function that
fails the test if it is called wherever a Hub call would be wrong.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbdist.bridge import AdapterSet
from lbdist.refs import Ref, ensure_available, fetch_hub, hub_errors, resolve_ref


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """A working directory holding `adapters/set1/`, `bare/`, `notes.txt` and `owner/`'s absence."""
    (tmp_path / "adapters" / "set1").mkdir(parents=True)
    (tmp_path / "bare").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def no_hub(monkeypatch):
    """Any Hub download fails the test."""
    import huggingface_hub

    def forbidden(*a, **k):
        raise AssertionError(f"snapshot_download called with {a} {k}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", forbidden)


# (reference, kind, expected Ref kind, expected value or None) ; value "ABS:x" means here / x
RESOLVED = [
    ("./adapters/set1", "adapters", "local", "ABS:adapters/set1"),
    ("adapters/set1", "adapters", "local", "ABS:adapters/set1"),  # owner/name-shaped, but it exists
    ("adapters/set1/", "adapters", "local", "ABS:adapters/set1"),
    ("bare", "adapters", "local", "ABS:bare"),  # an existing bare name
    ("notes.txt", "model", "local", "ABS:notes.txt"),
    ("~", "adapters", "local", os.path.expanduser("~")),
    ("someone/some-set", "adapters", "hub", "someone/some-set"),
    ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "model", "hub", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"),
    ("s3://bucket/sets/wan-n5", "adapters", "uri", "s3://bucket/sets/wan-n5"),
    ("gs://bucket/set", "adapters", "uri", "gs://bucket/set"),
    ("memory://set", "adapters", "uri", "memory://set"),
    ("hf://someone/some-set", "adapters", "uri", "hf://someone/some-set"),
    ("toy:wan", "model", "builtin", "toy:wan"),
    ("tiny:hunyuan_video", "model", "builtin", "tiny:hunyuan_video"),
]

REFUSED = [
    ("adapters/missing", "adapters", "no such directory (read as a local path because the directory 'adapters' exists"),
    ("./adapters/missing", "adapters", "no such file or directory"),
    ("/no/such/lbdist/dir", "adapters", "no such file or directory"),
    ("~/no-such-lbdist-dir", "model", "no such file or directory"),
    ("a/b/c", "adapters", "no such file or directory (and not a Hub id, which is owner/name)"),
    ("owner/na--me", "adapters", "not a Hub id"),
    ("owner/name.git", "adapters", "not a Hub id"),
    ("owner/-name", "adapters", "not a Hub id"),
    ("owner/na me", "adapters", "not a Hub id"),
    ("someone/some-set ", "adapters", "note the leading or trailing whitespace"),
    ("missing-set", "adapters", "is not an existing local path; give a local path"),
    ("gpt2", "model", "toy:<family> / tiny:<family>"),
    ("C:\\sets\\wan", "adapters", "no such file or directory"),
    ("file:///no/such/lbdist/dir", "adapters", "no such file or directory"),
    ("toy:wan", "adapters", "toy:/tiny: name built-in models, not adapter sets"),
    ("tiny:nope", "model", "unknown family 'nope'; use tiny:<family> with family one of wan, hunyuan_video, flux"),
    ("", "adapters", "reference is empty"),
    ("   ", "model", "reference is empty"),
    ("set\x00", "adapters", "contains a control character"),
    ("a\nb", "adapters", "contains a control character"),
    ("x:y", "adapters", "is not an existing local path"),
]


@pytest.mark.parametrize("text,kind,ref_kind,value", RESOLVED, ids=[r[0] for r in RESOLVED])
def test_references_resolve_by_the_one_rule(here, no_hub, text, kind, ref_kind, value):
    ref = resolve_ref(text, kind)
    value = str(here / value[4:]) if value.startswith("ABS:") else value
    assert (ref.kind, ref.value, ref.text, ref.of) == (ref_kind, value, text, kind)


@pytest.mark.parametrize("text,kind,message", REFUSED, ids=[repr(r[0]) for r in REFUSED])
def test_bad_references_are_refused_naming_them(here, no_hub, text, kind, message):
    with pytest.raises(ValueError) as info:
        resolve_ref(text, kind)
    said = str(info.value)
    assert message in said and (repr(text) in said or not text.strip()), said


def test_other_inputs_are_refused_and_paths_objects_are_local(here):
    assert resolve_ref(here / "bare").kind == "local"
    assert resolve_ref(Path("adapters/set1")).value == str(here / "adapters" / "set1")
    with pytest.raises(ValueError, match=r"no such file or directory"):
        resolve_ref(Path("adapters/missing"))
    with pytest.raises(ValueError, match=r"must be a string, got int"):
        resolve_ref(5)
    with pytest.raises(ValueError, match=r"kind must be one of \('adapters', 'model'\), got 'lora'"):
        resolve_ref("x/y", "lora")


def test_file_uri_is_a_local_path(here):
    assert resolve_ref(f"file://{here}/adapters/set1") == Ref("local", str(here / "adapters" / "set1"),
                                                              f"file://{here}/adapters/set1", "adapters")


def test_adapters_slash_missing_never_reaches_the_hub_when_the_folder_exists(here, no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # even online
    with pytest.raises(ValueError) as info:
        AdapterSet.load("adapters/missing")
    assert str(info.value) == ("adapters 'adapters/missing': no such directory (read as a local path because the "
                               "directory 'adapters' exists here; a Hub id of the same form would be shadowed by it)")


def test_adapters_slash_missing_offline_without_the_folder_is_one_line_naming_both_readings(tmp_path, no_hub,
                                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./adapters here: the text can only be a Hub id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError) as info:
        AdapterSet.load("adapters/missing")
    message = str(info.value)
    assert "\n" not in message
    assert message == ("adapters 'adapters/missing': not a local path, and as a Hub id it is not in the local Hub "
                       "cache while HF_HUB_OFFLINE=1 (unset it to download, or give a local directory)")


def _http_404():
    import httpx2
    from huggingface_hub import errors

    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/models/o/n"))
    return errors.RepositoryNotFoundError("404 Client Error.\n\nRepository Not Found for url ...", response=response)


@pytest.mark.parametrize("error,message", [
    (lambda: OSError("[Errno 101] Network is unreachable\nretrying..."), "fetching it failed (OSError: [Errno 101]"),
    (lambda: __import__("huggingface_hub").errors.LocalEntryNotFoundError("Cannot find ...\nlong"),
     "the Hub was unreachable (network?)"),
    (lambda: __import__("huggingface_hub").errors.OfflineModeIsEnabled("offline"), "HF_HUB_OFFLINE=1"),
    (_http_404, "no such repository on the Hub (or it is private"),
])
def test_hub_failures_online_are_one_line_naming_the_reference(tmp_path, monkeypatch, error, message):
    import huggingface_hub

    def failing(repo_id, **kw):
        raise error()

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    with pytest.raises(ValueError) as info:
        AdapterSet.load("someone/some-set")
    said = str(info.value)
    assert "\n" not in said and said.startswith("adapters 'someone/some-set': not a local path, and as a Hub id")
    assert message in said, said


def test_model_references_offline_are_checked_before_any_download(tmp_path, no_hub, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ref = resolve_ref("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "model")
    with pytest.raises(ValueError, match=r"^model 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers': not a local path, and as a "
                                         r"Hub id it is not in the local Hub cache while HF_HUB_OFFLINE=1"):
        ensure_available(ref)
    with pytest.raises(ValueError, match=r"HF_HUB_OFFLINE=1"):
        fetch_hub(ref)
    with pytest.raises(ValueError, match=r"^model 'x/y': not a local path, and as a Hub id fetching it failed "
                                         r"\(RuntimeError: boom\)$"):
        with hub_errors(Ref("hub", "x/y", "x/y", "model")):
            raise RuntimeError("boom\nmore")


_interesting = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9._\-]{0,12}/[A-Za-z0-9._\-]{0,12}", fullmatch=True),
    st.builds(lambda p, t: p + t, st.sampled_from(["toy:", "tiny:", "./", "/", "~", "~/", "file://", "s3://",
                                                   "C:\\", "\\\\", ".", "adapters/", "memory://"]),
              st.text(max_size=20)),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.binary(max_size=10).map(lambda b: b.decode("utf-8", "surrogateescape")),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_interesting, kind=st.sampled_from(["adapters", "model"]))
def test_any_string_resolves_or_raises_value_error(text, kind):
    try:
        ref = resolve_ref(text, kind)
    except ValueError:
        return
    assert ref.kind in ("local", "uri", "hub", "builtin") and isinstance(ref.value, str)
    if ref.kind == "hub":
        assert text.count("/") == 1 and not os.path.exists(text)
    if ref.kind == "builtin":
        assert kind == "model"
