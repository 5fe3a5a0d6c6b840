"""Schedules: periodic and explicit full-step sets, step plans, parsing, and their errors."""
import pytest

from lbdist.bridge import Schedule


def test_periodic_matches_the_papers_zero_based_definition():
    s = Schedule.periodic(12, 5)
    assert s.full_steps == (0, 5, 10)
    assert s.bridged_steps == (1, 2, 3, 4, 6, 7, 8, 9, 11)
    assert [(p.step, p.anchor, p.offset) for p in s.bridges()][:5] == [(1, 0, 1), (2, 0, 2), (3, 0, 3), (4, 0, 4), (6, 5, 1)]
    assert s.plan(11).anchor == 10 and not s.plan(11).full
    assert s.plan(5).full and s.plan(5).anchor == 5


def test_periodic_warmup_and_cooldown_are_full():
    s = Schedule.periodic(20, 5, warmup=3, cooldown=2)
    assert s.full_steps == (0, 1, 2, 5, 10, 15, 18, 19)
    assert s.plan(4).anchor == 2
    assert s.description == "periodic:5:w=3:z=2"


def test_interval_one_is_all_full():
    s = Schedule.periodic(7, 1)
    assert s.full_steps == tuple(range(7)) and s.bridged_steps == ()
    assert Schedule.full(7) == s


def test_explicit_sorted_and_anchors():
    s = Schedule.explicit(10, [7, 0, 3])
    assert s.full_steps == (0, 3, 7)
    assert [s.plan(i).anchor for i in range(10)] == [0, 0, 0, 3, 3, 3, 3, 7, 7, 7]


@pytest.mark.parametrize("text,steps,full", [
    ("5", 12, (0, 5, 10)),
    ("periodic:4", 9, (0, 4, 8)),
    ("periodic:5:w=2:z=1", 12, (0, 1, 5, 10, 11)),
    ("steps:0,2,9", 10, (0, 2, 9)),
])
def test_parse(text, steps, full):
    assert Schedule.parse(text, steps).full_steps == full


def test_round_trip_through_dict():
    s = Schedule.periodic(50, 6, warmup=2)
    assert Schedule.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("make,message", [
    (lambda: Schedule.periodic(10, 0), r"interval N must be an integer >= 1, got 0"),
    (lambda: Schedule.periodic(10, -3), r"interval N must be an integer >= 1, got -3"),
    (lambda: Schedule.periodic(0, 2), r"num_steps must be an integer in 1..10000, got 0"),
    (lambda: Schedule.periodic(10, 2, warmup=0), r"warmup must be an integer in 1\.\.10"),
    (lambda: Schedule.periodic(10, 2, cooldown=11), r"cooldown must be an integer in 0\.\.10"),
    (lambda: Schedule.explicit(10, []), r"full_steps is empty"),
    (lambda: Schedule.explicit(10, [0, 10]), r"full steps \[10\] are out of range: valid steps are 0\.\.9"),
    (lambda: Schedule.explicit(10, [0, -1]), r"full steps \[-1\] are out of range"),
    (lambda: Schedule.explicit(10, [2, 5]), r"step 0 must be full .* got full_steps \[2, 5\]"),
    (lambda: Schedule.explicit(10, [0, 3, 3]), r"duplicates"),
    (lambda: Schedule.parse("every-5", 10), r"cannot parse schedule 'every-5'"),
    (lambda: Schedule.parse("steps:1,2", 10), r"step 0 must be full"),
    (lambda: Schedule.periodic(10, 3).plan(10), r"step 10 is out of range: this schedule has steps 0\.\.9"),
])
def test_bad_schedules_raise_naming_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()
