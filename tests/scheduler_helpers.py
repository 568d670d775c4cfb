"""Rank 0's scheduler driven without ranks: items completed as the last stage would,
with fake logits in which token 7 is always the most likely."""

from __future__ import annotations

import mlx.core as mx

from refserver.engine.executor import PositionLogits
from refserver.engine.scheduler import Scheduler, Sequence
from refserver.engine.work import Decode, Prefill

VOCAB = 50
LIKELY = 7


def likely(hidden: mx.array) -> mx.array:
    """A head: logits in which LIKELY is the most likely token, one row per position."""
    return mx.zeros((hidden.shape[0], VOCAB)).at[:, LIKELY].add(5.0)


def complete(scheduler: Scheduler, item, head=likely) -> None:
    """Read `item`'s result: its logits when it produces tokens or scores a prompt
    (then `head` makes each position's)."""
    rows = len(item.seqs) if isinstance(item, Decode) else 1
    produces = isinstance(item, Decode) or (isinstance(item, Prefill) and item.final)
    logits = likely(mx.zeros((rows, 1))) if produces else None
    if isinstance(item, Prefill) and item.scores:
        logits = PositionLogits(mx.zeros((len(item.tokens), 1)), head)
    scheduler.on_result(item, scheduler.start_sampling(item, logits))
    scheduler.flush()


def run(
    scheduler: Scheduler, steps: int = 2000, in_flight: int = 1, check=None, head=likely
) -> list:
    """Issue up to `in_flight` items ahead and complete them in order, as the leader
    does; `check(scheduler)` after each result. The items issued."""
    issued, pending = [], []
    for _ in range(steps):
        while len(pending) < in_flight and (item := scheduler.next_item()) is not None:
            issued.append(item)
            pending.append(item)
        if not pending:
            break
        complete(scheduler, pending.pop(0), head)
        if check is not None:
            check(scheduler)
    return issued


def events(sequence: Sequence) -> list:
    """The events queued for a sequence so far."""
    found = []
    while not sequence.events.empty():
        found.append(sequence.events.get())
    return found
