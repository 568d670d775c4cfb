"""A rank whose MLX ring cannot start says why, as a start-up error, not a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from simcluster.launch import free_ports

# Joins the ring as refserver's start-up does, in a process of its own (a ring that did
# start would wait for its peer until the watchdog ends the process).
JOIN_RING = """
import sys
from refserver.cluster import StartupError, _init_ring
from refserver.config import ClusterConfig
config = ClusterConfig.from_env("unused", connect_timeout=10)
try:
    _init_ring(config)
except StartupError as exc:
    print(exc)
    sys.exit(2)
"""


def test_a_ring_port_in_use_is_a_startup_error(tmp_path):
    with socket.socket() as taken:  # no SO_REUSEPORT: the ring cannot share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hostfile = tmp_path / "hosts.json"
        peer = free_ports(1)[0]
        hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{peer}"]]))
        env = {**os.environ, "MLX_RANK": "0", "MLX_HOSTFILE": str(hostfile)}
        result = subprocess.run(
            [sys.executable, "-c", JOIN_RING], env=env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2, result.stderr
    assert f"the MLX ring could not start on 127.0.0.1:{port}" in result.stdout
    assert "bind" in result.stdout.lower()
    assert "Traceback" not in result.stderr
