"""Rounds of a measurement beside its baseline, reduced to medians and ratios in extra_info."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable

Figures = dict[str, float]


class Paired:
    """Runs a benchmark's rounds and records every figure, its median and the ratios.

    The baseline is measured in pytest-benchmark's untimed `setup`, right before each
    timed round of the target: the machine drifts, so each round's ratio uses the
    baseline measured next to it, and the ratio reported is the median of those.
    """

    def __init__(self, benchmark, rounds: int, summary: list, row: str, column: str):
        self.benchmark = benchmark
        self.rounds = rounds
        self.summary = summary  # (row, column, figures to show) for the closing table
        self.row = row
        self.column = column

    def run(
        self,
        measure: Callable[[], Figures],
        baseline: Callable[[], Figures] | None = None,
        ratios: dict[str, tuple[str, str]] | None = None,
        shown: tuple[str, ...] = (),
    ) -> Figures:
        """Measure `rounds` times; `ratios` maps a name ending in `ratio` to (numerator,
        denominator) figures. A baseline's figures are named with a `baseline_` prefix.
        The closing table shows every ratio, and the figures named in `shown` (medians
        worth comparing across targets as they are, such as a time in seconds)."""
        rounds: list[Figures] = []
        pending: Figures = {}

        def setup() -> None:
            pending.clear()
            if baseline is not None:
                pending.update({f"baseline_{k}": v for k, v in baseline().items()})

        def target() -> None:
            rounds.append({**pending, **measure()})

        self.benchmark.pedantic(target, setup=setup, rounds=self.rounds, iterations=1)
        figures = _medians(rounds, ratios or {})
        self.benchmark.extra_info.update(figures)
        self.benchmark.extra_info["rounds"] = rounds
        table = {k: v for k, v in figures.items() if k.endswith("ratio") or k in shown}
        self.summary.append((self.row, self.column, table))
        return figures


def _medians(rounds: list[Figures], ratios: dict[str, tuple[str, str]]) -> Figures:
    by_name: dict[str, list[float]] = defaultdict(list)
    for figures in rounds:
        for name, value in figures.items():
            by_name[name].append(value)
        for name, (numerator, denominator) in ratios.items():
            by_name[name].append(figures[numerator] / figures[denominator])
    return {name: statistics.median(values) for name, values in by_name.items()}
