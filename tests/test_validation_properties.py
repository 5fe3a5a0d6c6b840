"""Property-based tests of request and schedule validation: any input validates or raises ValueError.

Whatever a user, a JSON body or a Serve client sends, `Schedule.parse(text, steps)`, `GenerationRequest(**fields)`,
`GenerationRequest.from_dict(data)`, `ModelInfo(...)` and `request.resolve(info)` either succeed with a value that
keeps their invariants, or raise ValueError; a TypeError, KeyError, ZeroDivisionError or a hang fails these tests.
"""
from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbdist.bridge.schedule import MAX_STEPS, Schedule
from lbdist.generation.request import OUTPUT_FORMATS, GenerationRequest, ModelInfo

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = tuple(f.name for f in fields(GenerationRequest))

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.binary(max_size=6), st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.tuples(st.integers()),
)
schedule_text = st.one_of(
    st.from_regex(r"\s?[0-9]{1,3}\s?", fullmatch=True),
    st.from_regex(r"periodic:[0-9]{1,3}(:[wz]=[0-9]{1,3}){0,3}", fullmatch=True),
    st.from_regex(r"steps:[0-9]{1,3}(,[0-9]{1,3}){0,6}", fullmatch=True),
    st.from_regex(r"(periodic|steps)?[:,=wz0-9 ]{0,12}", fullmatch=True),
    st.text(max_size=20), st.sampled_from(["\u0663", "5\u00a0", "1" * 12]),
    st.integers(4999, 5001).map(lambda n: "steps:0," + "1" * n),
)
# Per field: valid values (so that many requests reach resolve and the model's rules) and near misses.
valid = {
    "prompt": st.one_of(st.just("a red circle"), st.text(min_size=1, max_size=30).filter(str.strip)),
    "negative_prompt": st.one_of(st.none(), st.just(""), st.text(max_size=10)),
    "height": st.one_of(st.none(), st.sampled_from([16, 32, 64, 48, 8192])),
    "width": st.one_of(st.none(), st.sampled_from([16, 64, 24])),
    "num_frames": st.one_of(st.none(), st.sampled_from([1, 5, 9, 4])),
    "num_inference_steps": st.one_of(st.none(), st.integers(1, 60)),
    "guidance_scale": st.one_of(st.none(), st.floats(0, 50), st.integers(0, 50)),
    "seed": st.integers(0, 2**63 - 1),
    "schedule": st.one_of(st.none(), st.sampled_from(["1", "2", "5", "periodic:3:w=2", "steps:0,3", "steps:0,70"])),
    "adapters": st.none(),
    "allow_uncovered": st.booleans(),
    "output_format": st.one_of(st.none(), st.sampled_from(OUTPUT_FORMATS)),
    "fps": st.integers(1, 120),
}
near = {
    "prompt": st.one_of(st.sampled_from(["\ud800", " ", ""]), st.integers(3999, 4001).map(lambda n: "x" * n)),
    "negative_prompt": st.sampled_from(["\udcff", 5]),
    "height": st.integers(-2, 130), "width": st.sampled_from([0, 8193, 17]),
    "num_frames": st.integers(-2, 40), "num_inference_steps": st.sampled_from([0, -1, 1001]),
    "guidance_scale": st.sampled_from([-1.0, math.nan, math.inf, 50.5]), "seed": st.sampled_from([-1, 2**63, 2**64]),
    "schedule": schedule_text, "adapters": st.text(max_size=8), "allow_uncovered": st.integers(0, 1),
    "output_format": st.sampled_from(["webm", "MP4", ""]), "fps": st.sampled_from([0, 121, -1]),
}
good = {k: st.one_of(valid[k], near[k]) for k in valid}
request_fields = st.one_of(
    st.fixed_dictionaries({"prompt": valid["prompt"]}, optional={k: v for k, v in valid.items() if k != "prompt"}),
    st.fixed_dictionaries({"prompt": good["prompt"]}, optional={k: v for k, v in good.items() if k != "prompt"}),
    st.fixed_dictionaries({"prompt": st.one_of(good["prompt"], anything)},
                          optional={k: st.one_of(v, anything) for k, v in good.items() if k != "prompt"}))
_DEFAULT_KEYS = ("height", "width", "num_frames", "num_inference_steps", "guidance_scale")
default_values = st.one_of(  # a model's call defaults: as loading finds them (None included), or anything
    st.fixed_dictionaries({"height": st.sampled_from([16, 64, 8192]), "width": st.sampled_from([16, 32])}, optional={
        "num_frames": valid["num_frames"], "num_inference_steps": st.one_of(st.none(), st.integers(1, 60)),
        "guidance_scale": valid["guidance_scale"], "max_sequence_length": st.integers(1, 512)}),
    st.fixed_dictionaries({}, optional={k: st.one_of(good[k], anything) for k in _DEFAULT_KEYS}))
# Models as loading describes them (so that most requests reach the model's rules), and anything at all.
plausible_info = st.one_of(
    st.fixed_dictionaries(dict(family=st.just("wan"), is_video=st.just(True), pixel_multiple=st.sampled_from([8, 16]),
                               frame_rule=st.sampled_from([1, 4]), defaults=default_values)),
    st.fixed_dictionaries(dict(family=st.just("flux"), is_video=st.just(False), pixel_multiple=st.sampled_from([8, 16]),
                               frame_rule=st.just(0), defaults=default_values)),
)
arbitrary_info = st.fixed_dictionaries(dict(
    family=st.one_of(st.sampled_from(["wan", "flux", "hunyuan_video"]), anything),
    is_video=st.one_of(st.booleans(), anything),
    pixel_multiple=st.one_of(st.sampled_from([1, 8, 16]), st.integers(-1, 40), anything),
    frame_rule=st.one_of(st.sampled_from([0, 1, 4]), st.integers(-1, 8), anything),
    defaults=st.one_of(default_values, anything),
    branches=st.one_of(st.just(("cond",)), st.just(("cond", "uncond")), anything),
    heads=st.one_of(st.integers(1, 48), anything),
))
model_info = st.one_of(plausible_info, arbitrary_info)


def _raises_only_value_error(make):
    try:
        return make()
    except ValueError as err:
        assert str(err) and "\n" not in str(err), f"not one line: {err!r}"
        return None


@SETTINGS
@given(text=st.one_of(schedule_text, anything), steps=st.one_of(st.integers(-2, 120), st.just(MAX_STEPS + 1), anything))
def test_schedule_parse_gives_a_schedule_or_a_value_error(text, steps):
    schedule = _raises_only_value_error(lambda: Schedule.parse(text, steps))
    if schedule is not None:
        assert schedule.num_steps == steps and schedule.full_steps[0] == 0
        assert set(schedule.full_steps) | set(schedule.bridged_steps) == set(range(steps))
        assert all(schedule.plan(s).anchor <= s for s in schedule.bridged_steps)


@SETTINGS
@given(data=request_fields)
def test_a_request_validates_or_raises_value_error(data):
    request = _raises_only_value_error(lambda: GenerationRequest(**data))
    if request is not None:
        assert isinstance(request.prompt, str) and request.prompt.strip()
        assert request.guidance_scale is None or isinstance(request.guidance_scale, float)
        assert GenerationRequest.from_dict(request.to_dict()) == request


@SETTINGS
@given(data=st.one_of(anything, st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=4), st.integers()),
                                                st.one_of(anything, schedule_text), max_size=6), request_fields))
def test_from_dict_validates_or_raises_value_error(data):
    _raises_only_value_error(lambda: GenerationRequest.from_dict(data))


@SETTINGS
@given(data=request_fields, info_fields=model_info, not_info=st.one_of(st.none(), anything))
def test_resolve_gives_a_checked_request_or_a_value_error(data, info_fields, not_info):
    request = _raises_only_value_error(lambda: GenerationRequest(**data))
    info = _raises_only_value_error(lambda: ModelInfo(**info_fields))
    if request is None:
        return
    if info is None:  # anything that is not a ModelInfo is refused too
        _raises_only_value_error(lambda: request.resolve(not_info))
        return
    resolved = _raises_only_value_error(lambda: request.resolve(info))
    if resolved is None:
        return
    assert resolved.height % info.pixel_multiple == 0 and resolved.width % info.pixel_multiple == 0
    assert resolved.output_format in info.formats and 1 <= resolved.num_inference_steps <= 1000
    if info.is_video:
        assert (resolved.num_frames - 1) % info.frame_rule == 0
    else:
        assert resolved.num_frames is None
    if resolved.schedule is not None:
        assert resolved.bridge_schedule().bridged_steps
    assert resolved.resolve(info) == resolved  # resolving is idempotent
    kwargs = resolved.call_kwargs(info)
    assert kwargs["height"] == resolved.height and math.isfinite(kwargs.get("guidance_scale", 0.0))


@pytest.mark.parametrize("text", ["\u0663", "periodic:\u0665", "steps:0,\u0661"])
def test_schedules_take_ascii_digits_only(text):
    with pytest.raises(ValueError, match="cannot parse schedule"):
        Schedule.parse(text, 10)
