"""The automatic rollout's state machine. Pure: numbers in, the next stage out.

Stages: ``off`` -> ``shadow`` -> each step (``5%``, ``25%``, ...). The
decider (``rollout/decider.py``) reads the numbers from PostgreSQL and asks
``decide`` once a tick:

- promote, to the next step, when the last ``min_samples`` comparisons of
  this stage agree at ``promote_at`` or above;
- demote, from any step straight to ``shadow`` (the client stops getting the
  student at once), when the last ``window`` comparisons of this stage (at
  least ``min_window``) agree below ``demote_below``, or more than
  ``max_error_rate`` of the stage's recent student calls (at least
  ``min_calls``) failed, or of its background calls over the window (a
  timeout, an error status, no connection: the comparisons without an answer,
  at least ``min_calls`` with the answered ones); a student failing either
  way is not promoted either (background calls over the last ``min_samples``). Shadow never demotes itself: no client sees the
  student there, the background budget bounds its cost, and a fixed student
  can earn its way back up; ``curation serve NS --off`` ends a rollout.

No flapping: every stage counts only its own comparisons, so a demoted student
needs ``min_samples`` fresh agreeing comparisons to climb again, and a
promoted one ``min_window`` fresh ones before a window can send it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from curation.errors import InvalidInput

OFF = "off"
SHADOW = "shadow"


@dataclass(frozen=True, kw_only=True)
class Policy:
    steps: tuple[int, ...] = (5, 25, 50, 100)
    promote_at: float = 0.95
    min_samples: int = 200
    demote_below: float = 0.90
    max_error_rate: float = 0.02
    watch_percent: int = 2
    shadow_percent: int = 100
    window: int = 100  # the rolling window of the most recent comparisons (demotion)
    min_window: int = 50  # fewer comparisons in the window: no demotion on agreement
    min_calls: int = 50  # fewer student calls: no demotion on the error rate
    error_window_s: int = 60  # seconds of serving tallies the error rate covers

    def __post_init__(self) -> None:
        check(self)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "steps": list(self.steps)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Policy:
        """The stored policy; keys it does not know (a newer version's) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "steps" in values:
            values["steps"] = tuple(int(s) for s in values["steps"])
        return cls(**values)


def check(p: Policy) -> None:
    """One line for the first option out of range (the CLI's flags name them)."""
    if not p.steps or any(not 1 <= s <= 100 for s in p.steps):
        raise InvalidInput("--steps: give percentages between 1 and 100, e.g. 5,25,50,100")
    if any(b <= a for a, b in zip(p.steps, p.steps[1:], strict=False)):
        raise InvalidInput("--steps must increase, e.g. 5,25,50,100")
    for name in ("promote_at", "demote_below", "max_error_rate"):
        if not 0 <= getattr(p, name) <= 1:
            flag = name.replace("_", "-")
            raise InvalidInput(f"--{flag} is a share between 0 and 1, e.g. 0.95")
    if p.demote_below > p.promote_at:
        raise InvalidInput("--demote-below must not exceed --promote-at (e.g. 0.90 and 0.95)")
    for name in ("watch_percent", "shadow_percent"):
        if not 0 <= getattr(p, name) <= 100:
            raise InvalidInput(f"--{name.replace('_', '-')} is between 0 and 100")
    for name in ("min_samples", "window", "min_window", "min_calls", "error_window_s"):
        if getattr(p, name) < 1:
            raise InvalidInput(f"--{name.replace('_', '-')} must be at least 1")
    if p.min_window > p.window:
        raise InvalidInput("min_window must not exceed window")


def parse_steps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InvalidInput("--steps: comma-separated percentages, e.g. 5,25,50,100") from None


def is_stage(stage: str) -> bool:
    """A stage this module knows (``namespace.rollout`` may have been edited in psql)."""
    number = stage.removesuffix("%")
    return stage in (OFF, SHADOW) or (
        number != stage and number.isdigit() and 1 <= int(number) <= 100
    )


def step_stage(percent: int) -> str:
    return f"{percent}%"


def stage_of(serve_percent: int, shadow_percent: int) -> str:
    """The stage a hand-set share amounts to (for the history of a change by hand)."""
    if serve_percent > 0:
        return step_stage(serve_percent)
    return SHADOW if shadow_percent > 0 else OFF


@dataclass(frozen=True)
class Shares:
    """What the proxies do at a stage: serve, shadow and watch percentages."""

    serve: int
    shadow: int
    watch: int


def shares(p: Policy, stage: str) -> Shares:
    """Shadow keeps comparing the calls the teacher still answers; watch the student's."""
    if stage == OFF:
        return Shares(0, 0, 0)
    if stage == SHADOW:
        return Shares(0, p.shadow_percent, 0)
    percent = int(stage.removesuffix("%"))
    return Shares(percent, p.shadow_percent if percent < 100 else 0, p.watch_percent)


@dataclass(frozen=True, kw_only=True)
class Stats:
    """The numbers behind a decision, all counted since the stage began."""

    samples: int = 0  # the stage's last min_samples comparisons (or fewer)
    agreed: int = 0  # of which agreed
    window_samples: int = 0  # the stage's last `window` comparisons (or fewer)
    window_agreed: int = 0
    student_calls: int = 0  # over the error window
    student_failures: int = 0
    errors: int = 0  # the student's failed background calls over the span of `samples`
    window_errors: int = 0  # ... over the span of `window_samples`

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.samples if self.samples else None

    @property
    def window_agreement(self) -> float | None:
        return self.window_agreed / self.window_samples if self.window_samples else None

    @property
    def error_rate(self) -> float | None:
        return self.student_failures / self.student_calls if self.student_calls else None

    @property
    def background_error_rate(self) -> float | None:
        """Of the stage's background student calls, the share that failed (no answer)."""
        calls = self.samples + self.errors
        return self.errors / calls if calls else None

    @property
    def window_error_rate(self) -> float | None:
        calls = self.window_samples + self.window_errors
        return self.window_errors / calls if calls else None


@dataclass(frozen=True)
class Decision:
    to_stage: str
    reason: str
    agreement: float | None = None
    samples: int | None = None
    error_rate: float | None = None


def next_stage(p: Policy, stage: str) -> str | None:
    if stage == OFF:
        return None
    if stage == SHADOW:
        return step_stage(p.steps[0])
    percent = int(stage.removesuffix("%"))
    higher = [s for s in p.steps if s > percent]
    return step_stage(higher[0]) if higher else None


def decide(p: Policy, stage: str, s: Stats) -> Decision | None:
    """The stage to move to and why, or None to stay."""
    if stage not in (OFF, SHADOW):
        down = _demotion(p, s)
        if down is not None:
            return down
    up = next_stage(p, stage)
    agreement = s.agreement
    if up is None or agreement is None or s.samples < p.min_samples:
        return None
    if agreement < p.promote_at or _failing(p, s):
        return None
    return Decision(
        up,
        f"promote: agreement {agreement:.3f} over {s.samples} >= {p.promote_at:g}",
        agreement,
        s.samples,
        s.error_rate if s.error_rate is not None else s.background_error_rate,
    )


def _over(p: Policy, failures: int, calls: int) -> float | None:
    """The error rate when more than max_error_rate of at least min_calls calls failed."""
    if calls < p.min_calls or not calls:
        return None
    rate = failures / calls
    return rate if rate > p.max_error_rate else None


def _failing(p: Policy, s: Stats) -> bool:
    """The student fails: on the calls it answers, or on the background calls of the stage."""
    return (
        _over(p, s.student_failures, s.student_calls) is not None
        or _over(p, s.errors, s.samples + s.errors) is not None
    )


def _demotion(p: Policy, s: Stats) -> Decision | None:
    for failures, calls, what in (
        (s.student_failures, s.student_calls, "calls"),
        (s.window_errors, s.window_samples + s.window_errors, "background calls"),
    ):
        rate = _over(p, failures, calls)
        if rate is not None:
            return Decision(
                SHADOW,
                f"demote: error rate {rate:.3f} over {calls} {what} > {p.max_error_rate:g}",
                s.window_agreement,
                s.window_samples,
                rate,
            )
    rate = s.error_rate
    window = s.window_agreement
    if window is not None and s.window_samples >= p.min_window and window < p.demote_below:
        return Decision(
            SHADOW,
            f"demote: agreement {window:.3f} over the last {s.window_samples} < {p.demote_below:g}",
            window,
            s.window_samples,
            rate,
        )
    return None
