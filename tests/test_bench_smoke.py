"""Every benchmark in bench/ runs once on the tiny preset, so none rots between
`tox -e bench` runs; its JSON holds every benchmark with its ratios.

Without --peers: mlx_lm.server's tensor-parallel ranks keep a core busy even idle, which
a 2-core CI machine cannot spare beside the rest of the suite."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("refserver-1", "refserver-2")
RATIOS = {
    "test_one_stream_decode": {"decode_ratio"},
    "test_concurrent_streams": {"aggregate_ratio", "aggregate_to_one_stream_ratio"},
    "test_long_prompt_prefill": {"prefill_ratio", "ttft_ratio"},
    "test_stream_gap_beside_long_prompt": {
        "gap_to_step_ratio",
        "gap_to_prefill_ratio",
        "beside_prefill_ratio",
    },
    "test_next_turn": {"next_turn_ttft_ratio", "repeat_ttft_ratio"},
    "test_idle_cpu": {"idle_cpu_core_ratio"},
    "test_constrained_decode": {"constrained_ratio"},
}
# Small enough to take well under a minute, large enough that every stream arrives in
# several pieces (a random model's text is held back a few tokens at a time).
TINY_RUN = ["--preset", "tiny", "--rounds", "1", "--tokens", "32"]
TINY_RUN += ["--prompt-tokens", "64", "--idle-seconds", "1"]


def test_every_benchmark_runs_once_and_reports_its_ratios(tmp_path):
    report = tmp_path / "bench.json"
    command = [sys.executable, "-m", "pytest", "bench", *TINY_RUN, "-p", "no:cacheprovider"]
    run = subprocess.run(
        [*command, f"--benchmark-json={report}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    benchmarks = json.loads(report.read_text())["benchmarks"]
    ratios = {bench["name"]: _ratios(bench["extra_info"]) for bench in benchmarks}
    expected = {
        f"{test}[{target}{variant}]"
        for test in RATIOS
        for target in TARGETS
        for variant in (("-shared", "-distinct") if test == "test_concurrent_streams" else ("",))
    }
    assert set(ratios) == expected
    for name, values in ratios.items():
        assert set(values) == RATIOS[name.split("[")[0]], name
        assert all(math.isfinite(v) and v >= 0 for v in values.values()), (name, values)
    table = run.stdout[run.stdout.index("ratios, ") :]
    for row in ("test_next_turn next_turn_ttft_ratio", "test_next_turn next_ttft_s"):
        assert f"| {row} | " in table  # seconds too: compared across targets as they are


def _ratios(extra_info: dict) -> dict[str, float]:
    return {key: value for key, value in extra_info.items() if key.endswith("ratio")}
