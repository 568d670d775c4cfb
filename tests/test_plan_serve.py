"""End to end: serve with the split and KV budget `refserver plan` prints."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from rank_helpers import assert_in_step

from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow


def test_serves_with_the_printed_split(tiny_model):
    plan = subprocess.run(
        [sys.executable, "-m", "refserver", "plan", "--model", str(tiny_model)]
        + ["--memory", "4MB,1MB", "--context", "256", "--concurrency", "2"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    split = re.search(r"^MINIMAX_PIPELINE_SPLIT=(\S+)$", plan, re.MULTILINE).group(1)
    kv_budget = re.search(r"--kv-budget (\S+)", plan).group(1)
    assert split == "3,1"  # rank 1's 1 MB holds the embedding and one layer only
    with ServerCluster(
        2, tiny_model, split=split, extra_args=("--kv-budget", kv_budget)
    ) as cluster:
        assert_in_step(cluster, tiny_model)
        ranks = cluster.status()["ranks"]
        assert [rank["layers"] for rank in ranks] == [[1, 3], [0, 0]]
        assert all(rank["kv_budget_bytes"] == 1_000_000 for rank in ranks)
