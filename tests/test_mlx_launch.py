"""Users deploy with `mlx.launch`: parity must hold under it, not only under simcluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
import pytest

from simcluster.launch import free_ports
from simcluster.parity import chat_prompt_tokens, reference_tokens, worker_command

pytestmark = pytest.mark.slow


def consecutive_free_ports(count: int) -> int:
    """A first port such that `count` consecutive ports are free (mlx.launch counts up)."""
    for _ in range(50):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        first = probe.getsockname()[1]
        probe.close()
        if first + count >= 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                sockets.append(sock)
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no run of free ports found")


def mlx_launch() -> str:
    found = shutil.which("mlx.launch") or str(Path(sys.executable).parent / "mlx.launch")
    if not Path(found).exists():
        pytest.fail("mlx.launch is not installed beside this Python")
    return found


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def two_local_ranks(*command: str) -> list[str]:
    """`mlx.launch -n 2 --backend ring` on free ports: two ring ports, and the
    control port one past the highest."""
    first_port = consecutive_free_ports(3)
    return [
        mlx_launch(),
        "-n",
        "2",
        "--backend",
        "ring",
        "--starting-port",
        str(first_port),
        "--",
    ] + list(command)


def test_parity_under_mlx_launch(tiny_model, tmp_path):
    prompt = chat_prompt_tokens(tiny_model)
    output = tmp_path / "tokens.json"
    command = two_local_ranks(*worker_command(tiny_model, prompt, 64, output))
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(output.read_text())["tokens"] == reference_tokens(tiny_model, prompt, 64)


def test_server_under_mlx_launch(tiny_model, tmp_path):
    http_port = free_ports(1)[0]
    command = two_local_ranks(
        sys.executable,
        "-m",
        "refserver",
        "--model",
        str(tiny_model),
        "--port",
        str(http_port),
    )
    # The ranks' output goes to a file: a pipe nobody reads would fill and block them.
    log_file = tmp_path / "ranks.log"
    launcher = subprocess.Popen(
        command, stdout=log_file.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{http_port}/v1", api_key="x", max_retries=0, timeout=60
        )
        # /v1/models answers while the ranks load; /health is 200 only once they all have.
        deadline = time.monotonic() + 120
        while not healthy(f"http://127.0.0.1:{http_port}/health"):
            assert launcher.poll() is None, log_file.read_text()[-3000:]
            assert time.monotonic() < deadline, "the server never became healthy"
            time.sleep(0.5)
        reply = client.chat.completions.create(
            model="default_model",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=16,
            temperature=0,
        )
        assert reply.choices[0].message.content is not None
        assert reply.usage.completion_tokens >= 1
        # SIGTERM to every process of the launch: rank 0 drains, the others follow.
        os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
