"""Start-up failures of the server on real ranks: every rank exits non-zero within a
bounded time, with a message that says what to fix, and no traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rank_helpers import Logs

from simcluster.launch import free_ports
from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

BOUND_SECONDS = 30
CONNECT_TIMEOUT = "4"


def truncate(model: Path) -> None:
    (model / "model.safetensors").write_bytes(b"\x00" * 4)


def garble_header(model: Path) -> None:
    path = model / "model.safetensors"
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"x" * size + data[8 + size :])


def drop_a_layer_0_tensor(model: Path) -> None:
    """A checkpoint missing one of layer 0's weights (the same files on every rank)."""
    import mlx.core as mx

    weights = mx.load(str(model / "model.safetensors"))
    gone = next(name for name in sorted(weights) if ".layers.0." in name)
    del weights[gone]
    mx.save_safetensors(str(model / "model.safetensors"), weights, metadata={"format": "mlx"})
    index = json.loads((model / "model.safetensors.index.json").read_text())
    del index["weight_map"][gone]
    (model / "model.safetensors.index.json").write_text(json.dumps(index))


def copy_model(tiny_model: Path, tmp_path: Path, damage) -> Path:
    model = tmp_path / "damaged"
    shutil.copytree(tiny_model, model)
    damage(model)
    return model


def run_to_exit(server: ServerCluster) -> tuple[list[int | None], float]:
    started = time.monotonic()
    with server.ranks as ranks:
        codes = ranks.exit_codes(timeout=BOUND_SECONDS)
    return codes, time.monotonic() - started


def assert_failed_cleanly(codes, elapsed, logs: Logs, *words: str) -> None:
    output = logs.text()
    assert all(code not in (None, 0) for code in codes), (codes, output[-3000:])
    assert elapsed < BOUND_SECONDS
    for rank in range(len(codes)):
        assert " ERROR " in logs.text(rank), output[-3000:]
    for word in words:
        assert word in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.parametrize("bad_rank", [1, 0])
@pytest.mark.parametrize(
    "damage, words",
    [
        (truncate, ["cannot read the model weights", "truncated or corrupt"]),
        (garble_header, ["differs from rank 0 in model weights"]),
    ],
    ids=["truncated", "garbled-header"],
)
def test_a_rank_with_a_damaged_model(tiny_model, tmp_path, bad_rank, damage, words):
    damaged = copy_model(tiny_model, tmp_path, damage)
    logs = Logs()

    def command(rank, command):
        return [*command, "--model", str(damaged)] if rank == bad_rank else command

    args = ("--connect-timeout", CONNECT_TIMEOUT)
    server = ServerCluster(2, tiny_model, extra_args=args, sink=logs, rank_command=command)
    assert_failed_cleanly(*run_to_exit(server), logs, *words)


def test_a_model_that_cannot_be_loaded(tiny_model, tmp_path):
    damaged = copy_model(tiny_model, tmp_path, drop_a_layer_0_tensor)
    logs = Logs()
    args = ("--connect-timeout", CONNECT_TIMEOUT)
    server = ServerCluster(2, damaged, extra_args=args, sink=logs)
    assert_failed_cleanly(*run_to_exit(server), logs, "could not load the model")


OUT_OF_MEMORY = """
import mlx_lm.utils

def load_model(*args, **kwargs):
    raise MemoryError("[metal::malloc] simulated: more memory than the device holds")

mlx_lm.utils.load_model = load_model
"""


def test_one_rank_runs_out_of_memory_while_loading(tiny_model, tmp_path):
    # Same files on every rank (the handshake passes); rank 1's load fails, as when the
    # split gives it more layers than it has memory for.
    (tmp_path / "sitecustomize.py").write_text(OUT_OF_MEMORY)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))

    def command(rank, command):
        return ["env", f"PYTHONPATH={path}", *command] if rank == 1 else command

    logs = Logs()
    args = ("--connect-timeout", CONNECT_TIMEOUT)
    server = ServerCluster(2, tiny_model, extra_args=args, sink=logs, rank_command=command)
    codes, elapsed = run_to_exit(server)
    assert_failed_cleanly(codes, elapsed, logs, "rank 1 could not load the model: MemoryError")
    assert "loaded layers 2-3" in logs.text(0)  # rank 0 itself loaded


def test_a_kv_budget_that_holds_no_request(tiny_model):
    """Serving would refuse every request: the cluster does not start, and says why."""
    logs = Logs()
    args = ("--connect-timeout", CONNECT_TIMEOUT, "--kv-budget", "1KB")
    server = ServerCluster(2, tiny_model, extra_args=args, sink=logs)
    codes, elapsed = run_to_exit(server)
    assert_failed_cleanly(codes, elapsed, logs, "KV budget is too small", "at least 512")


def test_http_port_in_use(tiny_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        logs = Logs()
        args = ("--connect-timeout", CONNECT_TIMEOUT)
        server = ServerCluster(2, tiny_model, port=port, extra_args=args, sink=logs)
        codes, elapsed = run_to_exit(server)
    assert_failed_cleanly(codes, elapsed, logs, f"cannot listen on 127.0.0.1:{port}", "--port")


def lone_rank(rank: int, model: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    """One rank of a 2-rank hostfile whose peer never comes."""
    ring = free_ports(3)
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{ring[0]}"], [f"127.0.0.1:{ring[1]}"]]))
    env = {**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}
    env["REFSERVER_CONTROL_PORT"] = str(ring[2])
    command = [sys.executable, "-m", "refserver", "--model", str(model)]
    command += ["--port", str(free_ports(1)[0]), "--connect-timeout", CONNECT_TIMEOUT]
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    return result, time.monotonic() - started


@pytest.mark.parametrize("rank, words", [(0, "did not join"), (1, "did not accept")])
def test_a_peer_that_never_connects(tiny_model, tmp_path, rank, words):
    result, elapsed = lone_rank(rank, tiny_model, tmp_path)
    assert result.returncode != 0
    assert words in result.stderr, result.stderr
    assert elapsed < BOUND_SECONDS
    assert "Traceback" not in result.stderr
