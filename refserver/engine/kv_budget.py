"""KV memory: each rank's budget, and rank 0's ledger that admits sequences by it.

Each rank holds KV only for its own layers, so a token costs each rank a different
number of bytes; each rank states its budget and its bytes per token when it is
ready, and the cluster's capacity in tokens is that of its tightest rank. Rank 0
reserves, for every sequence it admits, the most it can ever hold (prompt plus
max_tokens), and counts what the caches allocate (kv_caches sizes them so): a
micro-batch's cache is rectangular (rows × its longest row, in steps of 256
positions), a prompt being prefilled has its own cache until it joins, and cached
prefixes keep theirs. A sequence that does not fit waits (cached prefixes are
evicted first); one that could never fit is refused. Nothing is preempted: a
running sequence never grows past what was reserved for it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# KV caches grow in steps of this many positions (as mlx_lm's do).
KV_STEP = 256
# Without --kv-budget, the share of the memory left after the weights that KV may take:
# the rest stays for activations, the prefill's temporaries and the system.
DERIVED_SHARE = 0.5

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str) -> int:
    """'512MB', '40GB', '1.5GiB', '1000000' -> bytes (GB = 10**9, GiB = 2**30)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", text.lower())
    if not match or match.group(2) == "ib":
        raise ValueError(f"--kv-budget must be a size such as 512MB or 40GB, got {text!r}")
    size = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if size <= 0:
        raise ValueError(f"--kv-budget must be more than 0, got {text!r}")
    return size


def derive_budget() -> tuple[int, str]:
    """This rank's KV budget from its memory once the weights are loaded, and whence."""
    import mlx.core as mx

    from .mlx_memory import recommended_working_set

    limit = recommended_working_set()
    if limit is not None:
        # The GPU's recommended working set, less what the weights already hold.
        free, source = limit - mx.get_active_memory(), "Metal's recommended working set"
    else:
        free, source = _available_memory(), "available memory"
    return int(max(0, free) * DERIVED_SHARE), f"{DERIVED_SHARE:.0%} of {source}"


def _available_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable")


@dataclass(frozen=True)
class RankKv:
    """What one rank's KV may use: its budget, and the bytes of one token's KV."""

    budget_bytes: int
    bytes_per_token: int

    @property
    def capacity_tokens(self) -> int:
        return self.budget_bytes // max(1, self.bytes_per_token)


def rounded(tokens: int) -> int:
    """Positions a cache of `tokens` allocates."""
    return -(-tokens // KV_STEP) * KV_STEP


def held_positions(batches: list[list[int]], prefilling_prompts: list[int]) -> int:
    """KV positions of micro-batches (rows × the longest reach) and of prompts being
    prefilled, each in its own cache."""
    used = sum(len(reaches) * rounded(max(reaches)) for reaches in batches if reaches)
    return used + sum(rounded(prompt) for prompt in prefilling_prompts)


# The KV positions of the smallest request: a one-token prompt's cache and its row.
LEAST_POSITIONS = 2 * KV_STEP


def least_useful_budget(ranks: list[RankKv]) -> int:
    """The least --kv-budget (every rank's) with which every rank holds one request."""
    return LEAST_POSITIONS * max(rank.bytes_per_token for rank in ranks)


class KvLedger:
    """The cluster's KV capacity in positions, and the most rank 0's decisions held."""

    def __init__(self, capacity_tokens: int):
        self.capacity_tokens = capacity_tokens
        self.high_water = 0

    def never_fits(self, prompt: int, reach: int) -> bool:
        """Alone in the cluster, the sequence would still exceed the capacity."""
        return held_positions([[reach]], [prompt]) > self.capacity_tokens

    def reach_limit(self, prompt: int) -> int:
        """The longest reach (prompt plus completion) a sequence with `prompt` can have
        alone in the cluster (at most `prompt`: not even one token fits after it)."""
        room = self.capacity_tokens - rounded(prompt)  # its cache while it is prefilled
        return max(0, room) // KV_STEP * KV_STEP

    def longest_prompt(self) -> int:
        """The longest prompt that fits alone in the cluster with one token after it."""
        low, high = 0, self.capacity_tokens  # never_fits only grows with the prompt
        while low < high:
            middle = (low + high + 1) // 2
            if self.never_fits(middle, middle + 1):
                high = middle - 1
            else:
                low = middle
        return low

    def record(self, used: int) -> None:
        self.high_water = max(self.high_water, used)
