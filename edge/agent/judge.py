"""The agent's decisions, as pure functions: accept a model after shadowing, roll it back live.

There are no labels at the edge, so "does no worse" means: on the recent window, the new
model's scores are all finite and its alert rate does not exceed the running model's by more
than a factor and a margin (a model that would flood the operators is refused). A model
that alerts less is accepted: the cloud promoted it on labelled data, which the edge lacks.

>>> import numpy as np
>>> s = Limits(max_rate_ratio=2.0, max_rate_increase=0.01)
>>> judge(np.array([0.1, 0.2, 5.0]), 1.0, np.array([0.1, 0.2, 0.3]), 1.0, s).accept
False
>>> judge(np.array([0.1, 0.2, 0.3]), 1.0, np.array([0.1, 0.2, 5.0]), 1.0, s).accept
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Limits:
    # The candidate may alert at most max(ratio * running rate, running rate + increase).
    max_rate_ratio: float = 2.0
    max_rate_increase: float = 0.01

    def ceiling(self, rate: float) -> float:
        return max(rate * self.max_rate_ratio, rate + self.max_rate_increase)


@dataclass(frozen=True)
class Verdict:
    accept: bool
    reason: str
    events: int
    candidate_rate: float | None
    running_rate: float | None


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def judge(
    candidate: NDArray[np.floating],
    candidate_threshold: float,
    running: NDArray[np.floating] | None,
    running_threshold: float | None,
    limits: Limits,
) -> Verdict:
    """Accept or refuse a candidate from both models' scores on the same recent events."""
    n = int(candidate.size)
    if n == 0:
        return Verdict(
            True,
            "no recent events to shadow-score; accepted on signature and feature checks",
            0,
            None,
            None,
        )
    bad = int(np.count_nonzero(~np.isfinite(candidate)))
    if bad:
        return Verdict(False, f"scores {bad} of the last {n} events as NaN/infinite", n, None, None)
    cand_rate = float(np.mean(candidate > candidate_threshold))
    if running is None or running_threshold is None:
        return Verdict(
            True,
            f"alert rate {_pct(cand_rate)} on the last {n} events "
            f"(no running model to compare with)",
            n,
            cand_rate,
            None,
        )
    run_rate = float(np.mean(running > running_threshold))
    ceiling = limits.ceiling(run_rate)
    if cand_rate > ceiling:
        return Verdict(
            False,
            f"alert rate on the last {n} events would be {_pct(cand_rate)} "
            f"against {_pct(run_rate)} now (limit {_pct(ceiling)})",
            n,
            cand_rate,
            run_rate,
        )
    return Verdict(
        True,
        f"alert rate {_pct(cand_rate)} against {_pct(run_rate)} now on the last {n} events",
        n,
        cand_rate,
        run_rate,
    )


@dataclass
class Watch:
    """Live scores after activation: the agent rolls back when they go wrong.

    ``expected_rate`` is the higher of the two shadow rates: the live rate may reach what
    either model showed on the recent window (times the limits) before it counts as a jump.
    """

    stream: str
    version: str
    started: float
    expected_rate: float
    events: int = 0
    alerts: int = 0
    other_version_events: int = 0

    def observe(self, model_version: str, anomalous: bool) -> None:
        if model_version == self.version:
            self.events += 1
            self.alerts += anomalous
        else:
            self.other_version_events += 1

    @property
    def rate(self) -> float:
        return self.alerts / self.events if self.events else 0.0


@dataclass(frozen=True)
class WatchLimits:
    limits: Limits = Limits()
    # Judge the live rate only after this many events scored by the new model.
    min_events: int = 200
    # The scorer must score with the new model within this time, or the swap failed.
    activation_timeout_s: float = 60.0
    # Stop watching after this long (or after done_events scored by the new model).
    watch_s: float = 600.0
    done_events: int = 20_000


def check_watch(w: Watch, now: float, wl: WatchLimits) -> tuple[str, str] | None:
    """None while all is well; ``("rollback", why)`` or ``("done", why)`` otherwise."""
    age = now - w.started
    if w.events == 0 and age > wl.activation_timeout_s and w.other_version_events > 0:
        return (
            "rollback",
            f"the scorer kept scoring {w.other_version_events} events with "
            f"another model {age:.0f} s after the switch (it could not load "
            f"{w.version})",
        )
    if w.events >= wl.min_events:
        ceiling = wl.limits.ceiling(w.expected_rate)
        if w.rate > ceiling:
            return (
                "rollback",
                f"live alert rate {_pct(w.rate)} over {w.events} events "
                f"jumped past {_pct(ceiling)} (shadow rate "
                f"{_pct(w.expected_rate)})",
            )
    if w.events >= wl.done_events or age > wl.watch_s:
        return ("done", f"live alert rate {_pct(w.rate)} over {w.events} events")
    return None
