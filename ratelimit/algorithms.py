"""The three rate-limiting algorithms, as pure functions of (state, now).

Each ``check`` takes the key's stored state (``None`` when there is none), the time ``now`` (a
clock the caller injects, in seconds), the ``Rate`` and the cost of this request, and returns
the new state, how long to keep it (seconds), and a ``Decision``. No I/O and no clock of their
own: a storage runs one check atomically (under a lock, or inside the store that holds the
state), and tests drive them with a fake clock. States are tuples of numbers, so any storage
can keep them.

- ``fixed_window``: a counter per window aligned on the clock (``now // period``). Simple and
  exact, but a client can spend a limit at the end of one window and again at the start of the
  next.
- ``sliding_window``: the current window's count plus the previous window's, weighted by how
  much of it still overlaps the last ``period`` seconds (Cloudflare's estimate). It smooths
  the edge burst at the cost of two counters.
- ``token_bucket``: ``burst`` tokens (default: the rate's count), refilled at ``limit / period``
  per second; a request takes ``cost`` tokens. Allows short bursts, holds the average.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ratelimit.rates import Rate

State = tuple[float, ...]

# A state's first number says which algorithm wrote it: a counter checked by another algorithm
# (the same key used two ways) starts afresh instead of being misread.
FIXED, SLIDING, BUCKET = 1.0, 2.0, 3.0


def _mine(state: State | None, tag: float, size: int) -> State | None:
    return state if state is not None and len(state) == size and state[0] == tag else None


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int  # requests the policy allows per period (the bucket's size for a token bucket)
    remaining: int  # requests left now
    reset_after: float  # seconds until the quota is whole again
    retry_after: float  # seconds until a request like this one would be allowed (0: it was)


Check = Callable[[State | None, float, Rate, int, int | None], tuple[State, float, Decision]]


def fixed_window(
    state: State | None, now: float, rate: Rate, cost: int = 1, burst: int | None = None
) -> tuple[State, float, Decision]:
    period = rate.period
    start = math.floor(now / period) * period
    state = _mine(state, FIXED, 3)
    count = state[2] if state is not None and state[1] == start else 0.0
    allowed = count + cost <= rate.limit
    if allowed:
        count += cost
    reset = start + period - now
    decision = Decision(
        allowed=allowed,
        limit=rate.limit,
        remaining=max(0, int(rate.limit - count)),
        reset_after=reset,
        retry_after=0.0 if allowed else (reset if cost <= rate.limit else math.inf),
    )
    return (FIXED, start, count), reset, decision


def sliding_window(
    state: State | None, now: float, rate: Rate, cost: int = 1, burst: int | None = None
) -> tuple[State, float, Decision]:
    period, limit = rate.period, rate.limit
    start = math.floor(now / period) * period
    previous = current = 0.0
    state = _mine(state, SLIDING, 4)
    if state is not None:
        if state[1] == start:
            previous, current = state[2], state[3]
        elif state[1] == start - period:
            previous = state[3]
    overlap = 1.0 - (now - start) / period  # share of the previous window still in view
    used = previous * overlap + current
    allowed = used + cost <= limit
    if allowed:
        current += cost
        used += cost
    retry = 0.0 if allowed else sliding_retry(start, now, period, limit, previous, current, cost)
    # The count is whole again once the current window has slid out of view entirely.
    reset = (start + 2 * period - now) if current else (start + period - now)
    decision = Decision(
        allowed=allowed,
        limit=limit,
        remaining=max(0, math.floor(limit - used)),
        reset_after=reset,
        retry_after=retry,
    )
    return (SLIDING, start, previous, current), start + 2 * period - now, decision


def sliding_retry(
    start: float, now: float, period: float, limit: int, previous: float, current: float, cost: int
) -> float:
    """When ``previous * overlap + current + cost <= limit`` next holds."""
    if cost > limit:
        return math.inf
    room = limit - cost
    if current <= room and previous > 0:
        # Within this window, as the previous one's weight decays.
        at = start + period * (1.0 - (room - current) / previous)
        return max(0.0, at - now)
    # In the next window this one becomes the previous: current * overlap' <= room.
    at = start + period + period * (1.0 - room / current) if current > 0 else start + period
    return max(0.0, at - now)


def token_bucket(
    state: State | None, now: float, rate: Rate, cost: int = 1, burst: int | None = None
) -> tuple[State, float, Decision]:
    size = float(burst if burst is not None else rate.limit)
    per_second = rate.limit / rate.period
    state = _mine(state, BUCKET, 3)
    refilled = 0.0 if state is None else max(0.0, now - state[2]) * per_second
    tokens = size if state is None else min(size, state[1] + refilled)
    allowed = tokens >= cost
    if allowed:
        tokens -= cost
    full_in = (size - tokens) / per_second
    retry = 0.0 if allowed else ((cost - tokens) / per_second if cost <= size else math.inf)
    decision = Decision(
        allowed=allowed,
        limit=int(size),
        remaining=max(0, math.floor(tokens)),
        reset_after=full_in,
        retry_after=retry,
    )
    return (BUCKET, tokens, now), max(full_in, 1.0), decision


def reset_check(
    state: State | None, now: float, rate: Rate, cost: int = 1, burst: int | None = None
) -> tuple[State, float, Decision]:
    """Not an algorithm: forgets the counter (a fresh state that expires at once) and answers
    a whole quota. ``CounterStore.check`` deletes the key when it sees it."""
    return (), 0.0, Decision(True, rate.limit, rate.limit, 0.0, 0.0)


ALGORITHMS: dict[str, Check] = {
    "fixed_window": fixed_window,
    "sliding_window": sliding_window,
    "token_bucket": token_bucket,
}


def get(name: str) -> Check:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm {name!r}: one of {', '.join(sorted(ALGORITHMS))}"
        ) from None


def to_wire(decision: Decision) -> dict[str, object]:
    """A decision as JSON (an infinite retry-after, a cost over the limit, as null)."""
    retry = decision.retry_after
    return {
        "allowed": decision.allowed,
        "limit": decision.limit,
        "remaining": decision.remaining,
        "reset_after": round(decision.reset_after, 3),
        "retry_after": round(retry, 3) if math.isfinite(retry) else None,
    }


def from_wire(data: dict[str, object]) -> Decision:
    """The inverse of ``to_wire``; KeyError/TypeError/ValueError if malformed."""
    allowed = data["allowed"]
    if not isinstance(allowed, bool):
        raise TypeError("'allowed' is not a boolean")
    retry = data["retry_after"]
    return Decision(
        allowed=allowed,
        limit=int(data["limit"]),  # type: ignore[call-overload]
        remaining=int(data["remaining"]),  # type: ignore[call-overload]
        reset_after=float(data["reset_after"]),  # type: ignore[arg-type]
        retry_after=math.inf if retry is None else float(retry),  # type: ignore[arg-type]
    )
