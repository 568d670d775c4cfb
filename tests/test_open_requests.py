"""Rank 0's admission of open requests: a reply's choices are admitted whole or not at all."""

from __future__ import annotations

import threading

import pytest

from refserver.engine.interface import GenerationRequest, QueueFullError
from refserver.engine.open_requests import OpenRequests
from refserver.engine.scheduler import Sequence


def _sequences(prefix: str, count: int) -> list[Sequence]:
    return [
        Sequence(GenerationRequest(f"{prefix}-{i}", [1, 2], max_tokens=2)) for i in range(count)
    ]


@pytest.mark.parametrize(
    "limit, held, asked, admitted",
    [
        (4, 0, 4, True),
        (4, 0, 5, False),
        (4, 3, 1, True),
        (4, 4, 1, False),
        (6, 4, 2, True),
        (6, 4, 3, False),  # room for two: none of the three is held
        (1, 0, 1, True),
    ],
)
def test_a_reply_is_admitted_whole_or_not_at_all(limit, held, asked, admitted):
    open_requests = OpenRequests(limit)
    open_requests.admit(_sequences("held", held))
    reply = _sequences("reply", asked)
    if admitted:
        open_requests.admit(reply)
        assert len(open_requests) == held + asked
    else:
        with pytest.raises(QueueFullError, match=f"{held} requests open"):
            open_requests.admit(reply)
        assert {s.id for s in open_requests.snapshot()} == {f"held-{i}" for i in range(held)}


def test_a_closed_request_makes_room_and_closing_twice_is_harmless():
    open_requests = OpenRequests(2)
    first, second = _sequences("a", 2)
    open_requests.admit([first, second])
    open_requests.close(first.id)
    open_requests.close(first.id)
    open_requests.admit(_sequences("b", 1))
    assert len(open_requests) == 2


def test_two_replies_racing_for_the_room_of_one_do_not_both_lose():
    """Two replies of four choices, room for six: one gets in whole, the other is refused."""
    for _ in range(50):
        open_requests = OpenRequests(6)
        outcomes: list[bool] = []
        start = threading.Barrier(2)

        def reply(name: str, open_requests=open_requests, outcomes=outcomes, start=start) -> None:
            start.wait()
            try:
                open_requests.admit(_sequences(name, 4))
                outcomes.append(True)
            except QueueFullError:
                outcomes.append(False)

        threads = [threading.Thread(target=reply, args=(name,)) for name in ("x", "y")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == [False, True]
        assert len(open_requests) == 4
