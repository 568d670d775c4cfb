"""The control plane's door, without ranks: strangers are refused fast, whatever they send.
(test_security_cluster.py does the same against a real rank 0.)"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest

from refserver.control import Channel, ControlError, accept_peers, listen


def frame(message: dict) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack("!I", len(payload)) + payload


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        mine, _ = server.accept()
    return mine, theirs


def test_a_trickling_peer_cannot_stretch_a_timeout():
    mine, theirs = tcp_pair()
    stop = threading.Event()

    def trickle():
        for byte in frame({"type": "hello", "padding": "x" * 100}):
            if stop.wait(0.2):
                return
            theirs.sendall(bytes([byte]))

    threading.Thread(target=trickle, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(ControlError, match="within 1"):
        Channel(mine, "stranger").recv(timeout=1.0)
    assert time.monotonic() - started < 1.5
    stop.set()
    mine.close()
    theirs.close()


def test_an_oversized_message_is_refused_unread():
    mine, theirs = tcp_pair()
    theirs.sendall(struct.pack("!I", 10_000) + b"{")
    with pytest.raises(ControlError, match="10000-byte message"):
        Channel(mine, "stranger").recv(timeout=1.0, max_bytes=1000)
    mine.close()
    theirs.close()


def start_accepting():
    """Rank 0 accepting one peer (rank 1) in a thread: (listener, port, thread, result)."""
    listener = listen("127.0.0.1", 0)
    result = {}

    def accept():
        result["channels"] = accept_peers(
            listener, 2, {"127.0.0.1"}, "token", 10.0, lambda rank, facts: None
        )

    thread = threading.Thread(target=accept)
    thread.start()
    return listener, listener.getsockname()[1], thread, result


def test_strangers_do_not_count_and_the_real_peer_joins():
    listener, port, thread, result = start_accepting()
    replies = []
    for hello in (
        frame({"type": "hello", "rank": 1, "token": "wrong", "facts": {}}),
        frame({"type": "hello", "rank": 7, "token": "token", "facts": {}}),
        frame({"type": "nothing"}),
        b"\xff\xff\xff\xff",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(hello)
            replies.append(sock.recv(1000))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(frame({"type": "hello", "rank": 1, "token": "token", "facts": {}}))
        thread.join(timeout=10)
        welcome = Channel(sock, "rank 0").recv(timeout=5)
    listener.close()
    assert b"wrong cluster token" in replies[0] and b"invalid rank 7" in replies[1]
    assert b"no hello" in replies[2] and replies[3] == b""
    assert welcome == {"type": "welcome"}
    assert list(result["channels"]) == [1]
    result["channels"][1].close()


def test_a_silent_connection_does_not_delay_the_real_peer():
    listener, port, thread, result = start_accepting()
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    time.sleep(0.2)  # accepted, its hello being awaited
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(frame({"type": "hello", "rank": 1, "token": "token", "facts": {}}))
        welcome = Channel(sock, "rank 0").recv(timeout=5)
        thread.join(timeout=10)
    joined_after = time.monotonic() - started
    silent.close()
    listener.close()
    assert welcome == {"type": "welcome"} and list(result["channels"]) == [1]
    assert joined_after < 2.0  # not held for the silent one's hello timeout (5 s)
    result["channels"][1].close()
