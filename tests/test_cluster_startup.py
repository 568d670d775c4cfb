"""Start-up on real ranks: bad splits, mismatched peers and missing peers fail fast."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from simcluster.launch import LocalCluster, free_ports
from simcluster.parity import worker_command

pytestmark = pytest.mark.slow

# Start-up failures must end every rank within this many seconds.
BOUND_SECONDS = 30
PROMPT = [5, 6, 7, 8]


def run_failing_cluster(world, command, env=None, per_rank_env=None):
    lines: list[str] = []
    started = time.monotonic()
    with LocalCluster(world, command, env, per_rank_env, sink=lines.append) as cluster:
        codes = cluster.exit_codes(timeout=BOUND_SECONDS)
    return codes, "\n".join(lines), time.monotonic() - started


BAD_SPLITS = [
    # (env for every rank, per-rank env, words every failing rank's output contains)
    ({"MINIMAX_PIPELINE_SPLIT": "4"}, None, ["expected 2 entries", "got 1"]),
    ({"MINIMAX_PIPELINE_SPLIT": "2,3"}, None, ["sum to num_hidden_layers=4", "sum to 5"]),
    ({"MINIMAX_PIPELINE_SPLIT": "0,4"}, None, ["at least 1 layer", "got 0"]),
    ({"MINIMAX_PIPELINE_SPLIT": "-1,5"}, None, ["at least 1 layer", "got -1"]),
    ({"MINIMAX_PIPELINE_SPLIT": "two,2"}, None, ["integer", "'two'"]),
    (
        {"MINIMAX_PIPELINE_SPLIT": "2,2"},
        {1: {"MINIMAX_PIPELINE_SPLIT": "1,3"}},
        ["differs from rank 0 in MINIMAX_PIPELINE_SPLIT", "'1,3'", "'2,2'"],
    ),
]


@pytest.mark.parametrize("env,per_rank_env,words", BAD_SPLITS)
def test_bad_split_ends_every_rank_with_its_message(tiny_model, tmp_path, env, per_rank_env, words):
    command = worker_command(tiny_model, PROMPT, 4, tmp_path / "out.json")
    codes, output, elapsed = run_failing_cluster(2, command, env, per_rank_env)
    assert all(code not in (None, 0) for code in codes), (codes, output)
    assert elapsed < BOUND_SECONDS
    assert "MINIMAX_PIPELINE_SPLIT" in output
    for rank in (0, 1):
        rank_lines = "\n".join(line for line in output.splitlines() if f"[rank {rank}]" in line)
        assert "ERROR" in rank_lines or "error" in rank_lines, output
    for word in words:
        assert word in output, output
    assert "Traceback" not in output


def test_different_weights_on_one_rank_names_both_values(
    tiny_model, tiny_model_other_seed, tmp_path
):
    models = {0: tiny_model, 1: tiny_model_other_seed}

    def command(rank):
        return worker_command(models[rank], PROMPT, 4, tmp_path / "out.json")

    codes, output, _ = run_failing_cluster(2, command)
    assert all(code not in (None, 0) for code in codes), output
    assert "differs from rank 0 in model weights" in output
    assert output.count("rank 1 has '") >= 1 and "rank 0 has '" in output


def _lone_rank(rank, model, tmp_path, connect_timeout):
    """Start one rank of a 2-rank hostfile whose peer never comes."""
    ring = free_ports(3)
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{ring[0]}"], [f"127.0.0.1:{ring[1]}"]]))
    env = {
        **os.environ,
        "MLX_RANK": str(rank),
        "MLX_HOSTFILE": str(hostfile),
        "REFSERVER_CONTROL_PORT": str(ring[2]),
    }
    command = worker_command(
        model, PROMPT, 4, tmp_path / "o.json", "--connect-timeout", str(connect_timeout)
    )
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


@pytest.mark.parametrize("rank,words", [(0, "did not join"), (1, "did not accept")])
def test_peer_that_never_connects_ends_the_rank_in_bounded_time(tiny_model, tmp_path, rank, words):
    result, elapsed = _lone_rank(rank, tiny_model, tmp_path, connect_timeout=3)
    assert result.returncode != 0
    assert words in result.stderr
    assert elapsed < 15
    assert "Traceback" not in result.stderr


def test_parity_worker_reports_bad_model_path(tmp_path):
    command = worker_command(tmp_path / "missing", PROMPT, 4, tmp_path / "o.json")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "no such model directory" in result.stderr
    assert "Traceback" not in result.stderr
