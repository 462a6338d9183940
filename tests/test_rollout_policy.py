"""The rollout's state machine, without a database."""

from __future__ import annotations

import pytest

from curation.errors import InvalidInput
from curation.rollout.policy import (
    OFF,
    SHADOW,
    Policy,
    Shares,
    Stats,
    decide,
    is_stage,
    next_stage,
    parse_steps,
    shares,
    stage_of,
)

P = Policy()


def agreeing(n: int, share: float, *, window: int | None = None) -> Stats:
    """n comparisons agreeing at ``share``; the rolling window holds the last min(n, 100)."""
    w = min(n, P.window) if window is None else window
    return Stats(
        samples=min(n, P.min_samples),
        agreed=round(min(n, P.min_samples) * share),
        window_samples=w,
        window_agreed=round(w * share),
    )


def test_stages_in_order() -> None:
    assert next_stage(P, SHADOW) == "5%"
    assert next_stage(P, "5%") == "25%"
    assert next_stage(P, "50%") == "100%"
    assert next_stage(P, "100%") is None
    assert next_stage(P, OFF) is None
    assert next_stage(Policy(steps=(10, 100)), "25%") == "100%"  # a step edited away: go on


def test_promotes_with_enough_agreeing_samples() -> None:
    d = decide(P, SHADOW, agreeing(200, 0.95))
    assert d is not None and d.to_stage == "5%"
    assert d.agreement == 0.95 and d.samples == 200
    assert d.reason == "promote: agreement 0.950 over 200 >= 0.95"


@pytest.mark.parametrize(
    "stats",
    [
        agreeing(199, 1.0),  # one sample short
        agreeing(200, 0.945),  # just below promote_at
        Stats(),  # nothing yet
    ],
)
def test_stays_without_enough_or_good_enough_samples(stats: Stats) -> None:
    assert decide(P, SHADOW, stats) is None


def test_stays_at_the_top() -> None:
    assert decide(P, "100%", agreeing(200, 1.0)) is None


def test_off_never_moves() -> None:
    assert decide(P, OFF, agreeing(200, 1.0)) is None


def test_demotes_on_rolling_agreement_to_shadow() -> None:
    d = decide(P, "50%", agreeing(200, 0.8))
    assert d is not None and d.to_stage == SHADOW
    assert d.reason == "demote: agreement 0.800 over the last 100 < 0.9"
    assert d.agreement == 0.8 and d.samples == 100


def test_no_demotion_below_the_window_minimum() -> None:
    few = Stats(samples=49, agreed=0, window_samples=49, window_agreed=0)
    assert decide(P, "50%", few) is None
    enough = Stats(samples=50, agreed=0, window_samples=50, window_agreed=0)
    assert decide(P, "50%", enough) is not None


def test_at_demote_below_exactly_stays() -> None:
    at = Stats(samples=100, agreed=90, window_samples=100, window_agreed=90)
    assert decide(P, "25%", at) is None


def test_demotes_on_error_rate_with_enough_calls() -> None:
    failing = Stats(student_calls=100, student_failures=3)
    d = decide(P, "100%", failing)
    assert d is not None and d.to_stage == SHADOW
    assert d.error_rate == 0.03 and "error rate 0.030 over 100 calls > 0.02" in d.reason


def test_one_failure_of_two_is_not_fifty_percent() -> None:
    assert decide(P, "5%", Stats(student_calls=2, student_failures=1)) is None
    assert decide(P, "5%", Stats(student_calls=50, student_failures=1)) is None  # 2% exactly


def test_error_rate_wins_over_agreement() -> None:
    both = Stats(
        samples=200,
        agreed=200,
        window_samples=100,
        window_agreed=100,
        student_calls=100,
        student_failures=10,
    )
    d = decide(P, "25%", both)
    assert d is not None and d.to_stage == SHADOW and "error rate" in d.reason


def test_a_failing_student_is_not_promoted() -> None:
    failing = Stats(
        samples=200,
        agreed=200,
        window_samples=100,
        window_agreed=100,
        student_calls=100,
        student_failures=5,
    )
    assert decide(P, SHADOW, failing) is None


def test_a_student_whose_background_calls_fail_is_not_promoted_from_shadow() -> None:
    """In shadow no client gets the student (student_calls is 0): its failed background
    calls (timeouts, 5xx) are what show it failing; 200 answered and 200 failed is 50%."""
    mostly_failing = Stats(samples=200, agreed=200, window_samples=100, window_agreed=100)
    assert decide(P, SHADOW, mostly_failing) is not None  # without the errors: promoted
    failing = Stats(samples=200, agreed=200, window_samples=100, window_agreed=100, errors=200)
    assert decide(P, SHADOW, failing) is None
    few = Stats(samples=200, agreed=200, window_samples=100, window_agreed=100, errors=4)
    assert decide(P, SHADOW, few) is not None  # 4 of 204 is under 2%


def test_demotes_a_step_on_failed_background_calls() -> None:
    failing = Stats(window_samples=60, window_agreed=60, window_errors=5)
    d = decide(P, "25%", failing)
    assert d is not None and d.to_stage == SHADOW
    assert "error rate 0.077 over 65 background calls > 0.02" in d.reason
    assert decide(P, "25%", Stats(window_errors=10)) is None  # fewer than min_calls
    assert decide(P, "25%", Stats(window_errors=50)) is not None  # none answered at all
    assert decide(P, SHADOW, Stats(window_errors=500)) is None  # shadow never demotes itself


def test_shadow_never_demotes_itself() -> None:
    assert decide(P, SHADOW, agreeing(200, 0.1)) is None
    assert decide(P, SHADOW, Stats(student_calls=100, student_failures=100)) is None


def test_no_flapping_across_a_boundary() -> None:
    """Agreement between demote_below and promote_at neither promotes nor demotes, at any
    stage; after a demotion the fresh stage has no samples, so it stays put."""
    middling = agreeing(200, 0.92)
    for stage in (SHADOW, "5%", "25%", "50%", "100%"):
        assert decide(P, stage, middling) is None, stage
    assert decide(P, SHADOW, Stats()) is None


def test_walk_the_whole_rollout() -> None:
    stage, seen = SHADOW, [SHADOW]
    for _ in range(10):
        d = decide(P, stage, agreeing(500, 0.99))
        if d is None:
            break
        stage = d.to_stage
        seen.append(stage)
    assert seen == [SHADOW, "5%", "25%", "50%", "100%"]


def test_shares_per_stage() -> None:
    p = Policy(shadow_percent=30, watch_percent=2)
    assert shares(p, OFF) == Shares(0, 0, 0)
    assert shares(p, SHADOW) == Shares(0, 30, 0)
    assert shares(p, "25%") == Shares(25, 30, 2)
    assert shares(p, "100%") == Shares(100, 0, 2)


def test_stage_of_a_hand_set_share() -> None:
    assert stage_of(0, 0) == OFF
    assert stage_of(0, 10) == SHADOW
    assert stage_of(40, 10) == "40%"


def test_policy_round_trips_and_ignores_unknown_keys() -> None:
    p = Policy(steps=(10, 100), promote_at=0.9, demote_below=0.8)
    assert Policy.from_json(p.to_json()) == p
    assert Policy.from_json({**p.to_json(), "from_the_future": 1}) == p
    assert Policy.from_json({}) == Policy()


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"steps": ()}, "--steps"),
        ({"steps": (0, 50)}, "between 1 and 100"),
        ({"steps": (5, 101)}, "between 1 and 100"),
        ({"steps": (50, 25)}, "must increase"),
        ({"steps": (25, 25)}, "must increase"),
        ({"promote_at": 1.5}, "--promote-at"),
        ({"demote_below": -0.1}, "--demote-below"),
        ({"max_error_rate": 2.0}, "--max-error-rate"),
        ({"promote_at": 0.8, "demote_below": 0.9}, "must not exceed --promote-at"),
        ({"watch_percent": 101}, "--watch-percent"),
        ({"shadow_percent": -1}, "--shadow-percent"),
        ({"min_samples": 0}, "--min-samples"),
        ({"window": 10, "min_window": 20}, "min_window"),
    ],
)
def test_bad_policies_say_which_option(kw: dict[str, object], says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        Policy(**kw)  # type: ignore[arg-type]


def test_parse_steps() -> None:
    assert parse_steps("5,25,50,100") == (5, 25, 50, 100)
    with pytest.raises(InvalidInput, match="comma-separated"):
        parse_steps("5;25")
    with pytest.raises(InvalidInput, match="comma-separated"):
        parse_steps("")


@pytest.mark.parametrize(
    ("stage", "known"),
    [("off", True), ("shadow", True), ("5%", True), ("100%", True), ("0%", False),
     ("101%", False), ("5", False), ("%", False), ("x%", False), ("", False)],
)  # fmt: skip
def test_is_stage(stage: str, known: bool) -> None:
    assert is_stage(stage) is known
