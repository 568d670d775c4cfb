"""The ports simcluster gives its ranks: free, distinct, and out of the kernel's reach."""

from __future__ import annotations

import random
import socket

import pytest

from simcluster import launch
from simcluster.launch import LOWEST_PORT, free_ports


@pytest.mark.parametrize("count", [1, 3, 9])
def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range(count):
    ports = free_ports(count)
    assert len(set(ports)) == count
    first_ephemeral = launch._first_ephemeral_port()
    for port in ports:
        assert LOWEST_PORT <= port < first_ephemeral  # no outgoing connection gets one
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # released for the rank to bind


def test_a_taken_port_is_skipped(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        spare = _unused_port()
        offered = iter([busy, busy, spare])
        monkeypatch.setattr(launch, "_candidate_port", lambda _first_ephemeral: next(offered))
        assert free_ports(1) == [spare]


def test_a_port_given_out_before_is_not_given_again(monkeypatch):
    earlier = free_ports(1)[0]  # not bound by anyone yet, as a server's port before it starts
    spare = _unused_port()
    offered = iter([earlier, earlier, spare])
    monkeypatch.setattr(launch, "_candidate_port", lambda _first_ephemeral: next(offered))
    assert free_ports(1) == [spare]


def test_a_port_that_browsers_refuse_is_not_given(monkeypatch):
    # 10080 is on the Fetch standard's list: Node's fetch says "bad port", Chromium too
    refused = 10080
    spare = _unused_port()
    offered = iter([refused, spare])
    monkeypatch.setattr(launch, "_candidate_port", lambda _first_ephemeral: next(offered))
    assert free_ports(1) == [spare]


def test_seeding_the_random_module_does_not_repeat_ports():
    random.seed(7)
    first = free_ports(3)
    random.seed(7)
    assert not set(first) & set(free_ports(3))


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_gives_up_when_no_port_binds(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setattr(launch, "_candidate_port", lambda _first_ephemeral: busy)
        with pytest.raises(OSError, match="no 2 free ports"):
            free_ports(2)
