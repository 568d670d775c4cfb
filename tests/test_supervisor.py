"""The README's supervisor loop, run as written (only the deployment's names and ports
swapped for loopback ones): a rank killed mid-stream fails the clients, every rank
exits, the loop starts the cluster again and it serves; SIGTERM to the loop drains
the running request, waits for every rank and ends the loop with 0."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rank_helpers import chat_body, long_body, open_stream, post, wait_until
from test_mlx_launch import consecutive_free_ports, healthy
from test_reliability_silent_rank import StreamReader

from simcluster.launch import free_ports

pytestmark = pytest.mark.slow

README = Path(__file__).parent.parent / "README.md"
# From the kill to a served request: the loop's 10 s pause, a start-up and slack.
RESTART_WITHIN = 60.0
GONE_WITHIN = 10.0


def readme_supervisor() -> str:
    """The README's supervisor script, exactly as printed there."""
    blocks = re.findall(r"```shell\n(.*?)```", README.read_text(), re.S)
    return next(block for block in blocks if "refserver-forever" in block)


def on_loopback(script: str, model: Path, http_port: int, ring_port: int) -> str:
    """The script with the deployment's model, split and ports swapped for test ones."""
    swaps = {
        "--backend ring": f"--backend ring --starting-port {ring_port}",
        "MINIMAX_PIPELINE_SPLIT=22,40": "MINIMAX_PIPELINE_SPLIT=2,2",
        "mlx-community/MiniMax-M2.1-6bit": str(model),
        "--host 0.0.0.0 --port 8080": f"--host 127.0.0.1 --port {http_port}",
    }
    for old, new in swaps.items():
        assert script.count(old) == 1, f"the README's supervisor no longer has {old!r}"
        script = script.replace(old, new)
    return script


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rank_pids(loop_pid: int) -> dict[int, int]:
    """{rank: pid} of the refserver ranks the loop's mlx.launch started."""
    ranks = {}
    for pid in descendants(loop_pid):
        with contextlib.suppress(OSError):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if b"refserver" in command:
                for entry in environ:
                    if entry.startswith(b"MLX_RANK="):
                        ranks[int(entry.split(b"=", 1)[1])] = pid
    return ranks


def gone(pids) -> bool:
    return not any(Path(f"/proc/{pid}").exists() and _state(pid) != "Z" for pid in pids)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return ""


def serving(server, loop) -> dict[int, int]:
    """Wait until /health is 200 with both ranks up; their pids."""
    url = f"http://{server.host}:{server.port}/health"
    assert wait_until(lambda: healthy(url) and len(rank_pids(loop.pid)) == 2, 120, 0.2), loop.poll()
    return rank_pids(loop.pid)


def test_the_readme_supervisor_loop(tiny_model, tmp_path):
    server = SimpleNamespace(host="127.0.0.1", port=free_ports(1)[0])
    script = on_loopback(readme_supervisor(), tiny_model, server.port, consecutive_free_ports(3))
    (tmp_path / "refserver-forever").write_text(script)
    (tmp_path / "hosts.json").write_text(
        json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2)
    )
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "REFSERVER_API_KEY": ""}
    command = ["bash", str(tmp_path / "refserver-forever")]
    loop = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True)
    log = tmp_path / "refserver.log"
    try:
        first = serving(server, loop)
        restart = kill_a_rank_mid_stream(server, loop, first)
        print(f"the loop served again {restart:.1f} s after the kill")
        drain_on_sigterm(server, loop)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(loop.pid, signal.SIGKILL)
        for pid in descendants(loop.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        loop.wait()
    assert "restarting in 10 s" in log.read_text()


def kill_a_rank_mid_stream(server, loop, ranks: dict[int, int]) -> float:
    stream = StreamReader(open_stream(server, long_body(), events=5)[0])
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    events = stream.join()
    assert events[-1] == "[DONE]" and "rank 1" in events[-2]["error"]["message"], events[-3:]
    assert wait_until(lambda: gone(ranks.values()), GONE_WITHIN - (time.monotonic() - killed))
    print(f"every rank gone {time.monotonic() - killed:.1f} s after the kill")
    again = serving(server, loop)
    assert set(again.values()).isdisjoint(ranks.values())
    status, _, body = post(server, chat_body(max_tokens=8))
    assert status == 200 and body["usage"]["completion_tokens"] >= 1, body
    restart = time.monotonic() - killed
    assert restart < RESTART_WITHIN
    return restart


def drain_on_sigterm(server, loop) -> None:
    ranks = rank_pids(loop.pid)
    stream = StreamReader(open_stream(server, long_body(max_tokens=300), events=3)[0])
    loop.send_signal(signal.SIGTERM)
    events = stream.join()
    assert events[-1] == "[DONE]", events[-3:]
    assert not any("error" in event for event in events[:-1]), events[-3:]
    assert loop.wait(timeout=60) == 0
    assert gone(ranks.values())
