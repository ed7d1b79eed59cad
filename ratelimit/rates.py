"""Rates: ``"100/m"``, ``"5/10s"``, ``"1000/h"``, ``"10000/d"``.

A rate is a count of requests per period. The period is a unit (``s``, ``m``, ``h``, ``d``,
also spelled out: ``sec``, ``second``, ``min``, ``minute``, ``hour``, ``day``), optionally
preceded by a whole multiplier (``10s``, ``15m``). A bad rate raises ``ValueError`` with what
is wrong; ``ratelimit.checks`` finds them at start-up, not at request time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")
MAX_LIMIT = 10**9
MAX_PERIOD = 366 * 86400


@dataclass(frozen=True, slots=True)
class Rate:
    limit: int  # requests per period
    period: float  # seconds

    def __str__(self) -> str:
        return f"{self.limit}/{self.period:g}s"


def parse_rate(text: str | Rate) -> Rate:
    """``"100/m"`` -> Rate(100, 60.0); ValueError on anything else."""
    if isinstance(text, Rate):
        return text
    if not isinstance(text, str):
        raise ValueError(f"a rate is a string like '100/m', not {type(text).__name__}")
    match = _RATE.match(text.lower())
    if match is None:
        raise ValueError(f"rate {text!r} is not like '100/m', '5/10s', '1000/h' or '10000/d'")
    count, multiplier, unit = match.groups()
    if unit not in UNITS:
        raise ValueError(f"rate {text!r}: unknown unit {unit!r} (s, m, h or d)")
    limit = int(count)
    factor = int(multiplier) if multiplier else 1
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"rate {text!r}: the count must be 1 to {MAX_LIMIT}")
    period = factor * UNITS[unit]
    if not 1 <= period <= MAX_PERIOD:
        raise ValueError(f"rate {text!r}: the period must be 1 s to 366 days")
    return Rate(limit, float(period))
