"""Write versions from a hybrid logical clock (HLC).

Replicas resolve concurrent writes by last-write-wins, so every write needs a version that
orders the same way on every node. Plain wall-clock time is not enough: clocks drift and can
step backwards, and two writes in the same millisecond would tie. An HLC keeps the wall time
(so versions stay meaningful to humans and roughly ordered across nodes) and adds a counter
that breaks ties and carries causality when the wall clock stalls or goes back; the node name
makes versions from different nodes distinct. Plain tuple comparison gives the order.

The wall time is in microseconds: two writes to one key made one after the other through two
different coordinators (a client's batch and its next single-key call, say) are ordered by
their wall times whenever the coordinators' clocks agree to better than a round trip; with
milliseconds, both could fall in one millisecond and the earlier one win on its counter.
"""

import re
import threading
import time
from collections.abc import Callable

# (wall microseconds, counter, node name). Tuple comparison is the causal / LWW order.
Version = tuple[int, int, str]

# Node names appear in headers and URLs: printable ASCII, no spaces.
_NODE_RE = re.compile(r"[!-~]+")
# Canonical decimals: no sign, no leading zeros, at most 19 digits (absurd values are refused).
_NUMBER = r"(0|[1-9][0-9]{0,18})"
_VERSION_RE = re.compile(rf"{_NUMBER}-{_NUMBER}-([!-~]+)")
# What a stored record can hold (``records.HEADER``): a signed 64-bit time, an unsigned 32-bit
# counter. The counter never gets near it from this clock: it rolls over into the next tick.
MAX_MS = 2**63 - 1
MAX_COUNTER = 2**32 - 1


def _check_node(node: str) -> str:
    if not isinstance(node, str) or not _NODE_RE.fullmatch(node):
        raise ValueError(f"Invalid node name {node!r}: use printable ASCII without spaces.")
    return node


class HybridClock:
    """Hands out versions that only ever increase, whatever the wall clock does.

    ``wall`` returns seconds (``time.time`` by default); tests inject their own so they can
    move it backwards. ``observe`` merges versions seen from other nodes, so a write made
    here after seeing a remote write always wins over it.
    """

    def __init__(self, node: str, wall: Callable[[], float] = time.time) -> None:
        self.node = _check_node(node)
        self._wall = wall
        self._lock = threading.Lock()
        # The largest (ms, counter) handed out or observed; -1 so the first now() gets 0.
        self._ms = 0
        self._counter = -1

    def now(self) -> Version:
        """A version greater than every one this clock has returned or observed."""
        wall_ms = round(self._wall() * 1_000_000)  # microseconds (the name stays "ms")
        with self._lock:
            if wall_ms > self._ms:
                self._ms, self._counter = wall_ms, 0
            elif self._counter < MAX_COUNTER:
                # The wall clock stalled or went back: stay on the logical time and count.
                self._counter += 1
            else:
                self._ms, self._counter = self._ms + 1, 0
            return (self._ms, self._counter, self.node)

    def observe(self, version: Version) -> None:
        """Merge a remote version (the HLC receive rule) so that later ``now()`` exceeds it.

        Taking the maximum of (ms, counter) is enough: ``now()`` then either moves to a later
        wall millisecond or bumps the counter past the observed one, so the node name never
        has to break a tie.
        """
        ms, counter, _node = version
        with self._lock:
            if (ms, counter) > (self._ms, self._counter):
                self._ms, self._counter = ms, counter

    def __repr__(self) -> str:
        return f"<HybridClock node={self.node!r} last=({self._ms}, {self._counter})>"


def format_version(version: Version) -> str:
    """``"time-counter-node"`` (time in microseconds), the form versions take in headers and
    replication bodies."""
    ms, counter, node = version
    return f"{ms}-{counter}-{node}"


def parse_version(text: str) -> Version:
    """Inverse of ``format_version``; raises ValueError on anything but its canonical output.

    The node name may contain ``-``: the two numbers come first and are digits only, so the
    split is unambiguous.
    """
    match = _VERSION_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"Invalid version {text!r}: expected 'microseconds-counter-node'.")
    version = (int(match[1]), int(match[2]), match[3])
    check_range(version)
    return version


def check_version(version: Version) -> Version:
    """A version built from parts (not parsed from text): the checks ``parse_version`` makes;
    ValueError if it fails them."""
    _check_node(version[2])
    check_range(version)
    return version


def check_range(version: Version) -> None:
    """Refuse a well-formed version whose numbers do not fit a stored record."""
    ms, counter, _node = version
    if not (0 <= ms <= MAX_MS and 0 <= counter <= MAX_COUNTER):
        raise ValueError(
            f"Version {version!r} is out of range: microseconds up to {MAX_MS}, "
            f"counter up to {MAX_COUNTER}."
        )
