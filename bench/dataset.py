"""The data set both benchmarks load: keys with ~100-byte JSON values, and batches of keys."""

from __future__ import annotations

import random
from typing import Any

BATCH_KEYS = 100  # keys in one batch get (and one Redis MGET)


def make_dataset(n: int, seed: int = 42) -> list[tuple[str, dict[str, Any]]]:
    """n keys with JSON values of about 100 bytes (compact encoding)."""
    rng = random.Random(seed)
    tags = ["alpha", "beta", "gamma", "delta"]
    return [
        (
            f"bench-{i:06d}",
            {
                "id": i,
                "user": f"user-{i:06d}",
                "email": f"user{i:06d}@example.com",
                "score": round(rng.uniform(100, 999), 3),
                "tags": rng.sample(tags, 2),
            },
        )
        for i in range(n)
    ]


def batches(keys: list[str], count: int, size: int, seed: int = 7) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(keys, size) for _ in range(count)]
