"""Which layers each rank runs.

Rank 0 is the LAST pipeline stage and rank N-1 the FIRST: with
MINIMAX_PIPELINE_SPLIT=22,40 on a 62-layer model, rank 0 runs layers 40-61 and
rank 1 runs layers 0-39. Pure: no MLX needed.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLIT_VARIABLE = "MINIMAX_PIPELINE_SPLIT"


class SplitError(ValueError):
    """A pipeline split that cannot run; the message names variable, rule and value."""


def parse_split(text: str, world_size: int, num_layers: int) -> tuple[int, ...]:
    """Parse a comma-separated list of per-rank layer counts and validate it."""
    parts = [p.strip() for p in text.split(",")]
    counts = []
    for part in parts:
        try:
            counts.append(int(part))
        except ValueError:
            raise SplitError(
                f"{SPLIT_VARIABLE}={text!r}: every entry must be an integer layer count, "
                f"got {part!r}"
            ) from None
    return validate_split(tuple(counts), world_size, num_layers, shown=text)


def validate_split(
    counts: tuple[int, ...], world_size: int, num_layers: int, shown: str | None = None
) -> tuple[int, ...]:
    """Check count per rank, positivity and sum; return counts unchanged."""
    shown = shown if shown is not None else ",".join(map(str, counts))
    if len(counts) != world_size:
        raise SplitError(
            f"{SPLIT_VARIABLE}={shown!r}: expected {world_size} entries (one per rank), "
            f"got {len(counts)}"
        )
    for count in counts:
        if count < 1:
            raise SplitError(
                f"{SPLIT_VARIABLE}={shown!r}: every rank needs at least 1 layer, got {count}"
            )
    if sum(counts) != num_layers:
        raise SplitError(
            f"{SPLIT_VARIABLE}={shown!r}: entries must sum to num_hidden_layers={num_layers}, "
            f"they sum to {sum(counts)}"
        )
    return counts


def even_split(world_size: int, num_layers: int) -> tuple[int, ...]:
    """Split as evenly as possible; the lowest ranks (the last stages) take the extra layers.

    62 layers on 3 ranks gives (21, 21, 20): every layer runs exactly once.
    """
    if world_size > num_layers:
        raise SplitError(
            f"{world_size} ranks but only num_hidden_layers={num_layers}: "
            f"every rank needs at least 1 layer"
        )
    base, extra = divmod(num_layers, world_size)
    return tuple(base + (1 if rank < extra else 0) for rank in range(world_size))


@dataclass(frozen=True)
class PipelineSplit:
    """Per-rank layer counts, index = rank."""

    counts: tuple[int, ...]

    @classmethod
    def resolve(cls, text: str | None, world_size: int, num_layers: int) -> PipelineSplit:
        """The split from MINIMAX_PIPELINE_SPLIT's value, or an even split when unset."""
        if text is None or not text.strip():
            return cls(even_split(world_size, num_layers))
        return cls(parse_split(text, world_size, num_layers))

    @property
    def world_size(self) -> int:
        return len(self.counts)

    @property
    def num_layers(self) -> int:
        return sum(self.counts)

    def layer_range(self, rank: int) -> range:
        """The global layer indices rank runs: ranks above it run the earlier layers."""
        start = sum(self.counts[rank + 1 :])
        return range(start, start + self.counts[rank])

    def is_first_stage(self, rank: int) -> bool:
        return rank == self.world_size - 1

    def is_last_stage(self, rank: int) -> bool:
        return rank == 0

    def __str__(self) -> str:
        return ",".join(map(str, self.counts))
