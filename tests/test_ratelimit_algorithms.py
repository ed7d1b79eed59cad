"""The rate limiter's rates and algorithms, pure: a fake clock, exact counts."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratelimit import algorithms
from ratelimit.algorithms import Decision, fixed_window, sliding_window, token_bucket
from ratelimit.rates import Rate, parse_rate
from tests.clocks import FakeClock


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/m", Rate(100, 60.0)),
        ("5/10s", Rate(5, 10.0)),
        ("1000/h", Rate(1000, 3600.0)),
        ("10000/d", Rate(10000, 86400.0)),
        (" 7 / 15 min ", Rate(7, 900.0)),
        ("1/second", Rate(1, 1.0)),
        ("3/2hours", Rate(3, 7200.0)),
    ],
)
def test_rates_parse(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("100", "is not like"),
        ("100/", "is not like"),
        ("x/m", "is not like"),
        ("-1/m", "is not like"),
        ("0/m", "count must be"),
        ("10/0s", "period must be"),
        ("10/w", "unknown unit"),
        ("10/400d", "period must be"),
        (100, "a rate is a string"),
    ],
)
def test_bad_rates_say_what_is_wrong(text: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_rate(text)


def run(check: Any, clock: FakeClock, rate: Rate, n: int, **kw: Any) -> tuple[Any, list[Decision]]:
    state = kw.pop("state", None)
    out = []
    for _ in range(n):
        state, _, decision = check(state, clock(), rate, **kw)
        out.append(decision)
    return state, out


class TestFixedWindow:
    def test_exactly_the_limit_per_window_and_a_fresh_one_at_the_edge(self) -> None:
        clock = FakeClock(1_000_040.0)  # 20 s into a minute (1,000,020 is one's start)
        rate = Rate(5, 60.0)
        state, decisions = run(fixed_window, clock, rate, 7)
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
        denied = decisions[-1]
        assert denied.retry_after == pytest.approx(40.0)
        assert denied.reset_after == pytest.approx(40.0)
        clock.advance(39.999)
        state, (still,) = run(fixed_window, clock, rate, 1, state=state)
        assert not still.allowed
        clock.advance(0.001)  # the next window begins
        _, decisions = run(fixed_window, clock, rate, 6, state=state)
        assert [d.allowed for d in decisions] == [True] * 5 + [False]

    def test_cost(self) -> None:
        clock = FakeClock(0.0)
        _, decisions = run(fixed_window, clock, Rate(10, 1.0), 4, cost=3)
        assert [d.allowed for d in decisions] == [True, True, True, False]
        _, (too_big,) = run(fixed_window, clock, Rate(10, 1.0), 1, cost=11)
        assert not too_big.allowed
        assert too_big.retry_after == math.inf  # it never fits


class TestSlidingWindow:
    def test_the_previous_window_counts_by_its_overlap(self) -> None:
        clock = FakeClock(600.0)  # a window start (period 60)
        rate = Rate(10, 60.0)
        state, decisions = run(sliding_window, clock, rate, 10)
        assert all(d.allowed for d in decisions)
        clock.advance(60 + 15)  # 15 s into the next window: 45/60 of the last one still counts
        state, decisions = run(sliding_window, clock, rate, 5, state=state)
        # 10 * 0.75 = 7.5 used: 2 more fit (9.5), the third would make 10.5.
        assert [d.allowed for d in decisions] == [True, True, False, False, False]
        clock.advance(30)  # 45 s in: 10 * 0.25 + 2 = 4.5 used, 5 fit
        _, decisions = run(sliding_window, clock, rate, 6, state=state)
        assert [d.allowed for d in decisions] == [True] * 5 + [False]

    def test_retry_after_is_when_it_would_be_allowed(self) -> None:
        clock = FakeClock(600.0)
        rate = Rate(10, 60.0)
        state, _ = run(sliding_window, clock, rate, 10)
        clock.advance(61)
        state, decisions = run(sliding_window, clock, rate, 20, state=state)
        denied = next(d for d in decisions if not d.allowed)
        retry = denied.retry_after
        assert 0 < retry < 60
        clock.advance(retry - 0.01)
        state, (early,) = run(sliding_window, clock, rate, 1, state=state)
        assert not early.allowed
        clock.advance(0.02)
        _, (on_time,) = run(sliding_window, clock, rate, 1, state=state)
        assert on_time.allowed

    def test_an_old_state_counts_nothing(self) -> None:
        clock = FakeClock(600.0)
        state, _ = run(sliding_window, clock, Rate(3, 60.0), 3)
        clock.advance(180)
        _, decisions = run(sliding_window, clock, Rate(3, 60.0), 4, state=state)
        assert [d.allowed for d in decisions] == [True, True, True, False]


class TestTokenBucket:
    def test_burst_then_the_average(self) -> None:
        clock = FakeClock(0.0)
        rate = Rate(10, 10.0)  # one token a second
        state, decisions = run(token_bucket, clock, rate, 6, burst=5)
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert decisions[-1].retry_after == pytest.approx(1.0)
        assert decisions[0].limit == 5
        clock.advance(2.5)
        state, decisions = run(token_bucket, clock, rate, 3, state=state, burst=5)
        assert [d.allowed for d in decisions] == [True, True, False]
        clock.advance(100)  # never more than the bucket holds
        _, decisions = run(token_bucket, clock, rate, 6, state=state, burst=5)
        assert [d.allowed for d in decisions] == [True] * 5 + [False]

    def test_the_default_bucket_is_the_rate_s_count(self) -> None:
        clock = FakeClock(0.0)
        _, decisions = run(token_bucket, clock, Rate(3, 1.0), 4)
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert decisions[-1].reset_after == pytest.approx(1.0)


@given(
    name=st.sampled_from(sorted(algorithms.ALGORITHMS)),
    limit=st.integers(1, 50),
    period=st.sampled_from([1.0, 10.0, 60.0]),
    gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=200),
)
def test_never_more_than_the_limit_in_any_period_and_retry_after_holds(
    name: str, limit: int, period: float, gaps: list[float]
) -> None:
    """For any arrival pattern: admitted requests in any window of ``period`` seconds never
    exceed what the algorithm allows (2x the limit for a fixed window's edge, the bucket plus
    refill for a token bucket), and a denied request's ``retry_after`` is never early."""
    check = algorithms.get(name)
    rate = Rate(limit, period)
    now, state = 1000.0, None
    admitted: list[float] = []
    for gap in gaps:
        now += gap
        state, ttl, decision = check(state, now, rate, 1, None)
        assert ttl > 0
        assert 0 <= decision.remaining <= decision.limit
        if decision.allowed:
            admitted.append(now)
        elif decision.retry_after != math.inf:
            _, _, later = check(state, now + decision.retry_after + 1e-6, rate, 1, None)
            assert later.allowed
    bound = {"fixed_window": 2 * limit, "sliding_window": 2 * limit, "token_bucket": 2 * limit}
    for i, t in enumerate(admitted):
        in_window = sum(1 for u in admitted[i:] if u < t + period)
        assert in_window <= bound[name]


def test_unknown_algorithms_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown algorithm"):
        algorithms.get("leaky")
