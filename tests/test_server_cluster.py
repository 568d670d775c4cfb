"""simcluster's ServerCluster.health() against servers that answer oddly: whatever comes
back, a status and a body, never an exception (tests poll it from threads)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from simcluster.serve import ServerCluster

BODY = b'{"status": "lost"}'
# (what the server sends before it closes, the health() it gives)
ANSWERS = [
    (b"HTTP/1.0 200 OK\r\nContent-Length: 18\r\n\r\n" + BODY, (200, {"status": "lost"})),
    (b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 18\r\n\r\n" + BODY,
     (503, {"status": "lost"})),
    (b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 90\r\n\r\n{", (503, {})),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 90\r\n\r\n{", (0, {})),
    (b"", (0, {})),
]  # fmt: skip


@pytest.mark.parametrize("answer, health", ANSWERS)
def test_health_of_a_server_that_goes_away_mid_answer(answer, health):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer_once():
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(answer)

        threading.Thread(target=answer_once, daemon=True).start()
        port = listener.getsockname()[1]
        cluster = ServerCluster(1, Path("unused"), port=port)
        assert cluster.health() == health
