"""Work items: what every rank does for one pipeline step, as rank 0 decided it.

Rank 0 sends each item over the control plane before running it itself; every
rank runs the items in the same order, so their KV caches never diverge. Every
item first applies its prefix-cache ops (see prefix_cache), then drops the caches
of finished sequences, then does its own work. A
micro-batch's first decode step carries its input tokens in the item; its later
steps are issued one step ahead and take the tokens rank 0 samples over the ring.
While work is in flight the ranks wait inside ring operations (which poll, but
answer fastest); between requests they block in a socket read, which costs no CPU."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Prefill:
    """Feed a chunk of one sequence's prompt into its own (unbatched) cache.

    `final` chunks are the prompt's last token alone, as mlx_lm.generate_step
    does it; their logits give the first generated token. A sequence's first
    chunk may `reuse` [entry, k]: its cache starts as the first k tokens of that
    prefix-cache entry. With `scores`, the last stage gives the logits of every
    position of the chunk (the prompt's log-probabilities were asked for).
    """

    seq: str
    tokens: list[int]
    final: bool
    drop: list[str] = field(default_factory=list)
    cache_ops: list[list] = field(default_factory=list)
    reuse: list[int] | None = None
    scores: bool = False
    kind: str = "prefill"


@dataclass(frozen=True)
class Decode:
    """One token for every sequence of a micro-batch.

    Before the step, `drop` sequences leave whatever cache holds them and `join`
    sequences (prefilled, waiting) enter this micro-batch's batched cache, in
    that order; `seqs` then lists the batch rows in order, `tokens` their inputs.
    With `issued_ahead`, rank 0 issued the item one step ahead: its inputs are the
    previous step's samples, which rank 0 sends over the ring to the first stage
    (on one rank they go straight into the next step).
    """

    batch: int
    seqs: list[str]
    tokens: list[int]
    join: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    cache_ops: list[list] = field(default_factory=list)
    issued_ahead: bool = False
    kind: str = "decode"


@dataclass(frozen=True)
class Release:
    """Free the caches of finished or cancelled sequences when no step is due."""

    drop: list[str]
    cache_ops: list[list] = field(default_factory=list)
    kind: str = "release"


WorkItem = Prefill | Decode | Release
_KINDS = {"prefill": Prefill, "decode": Decode, "release": Release}


def to_message(item: WorkItem) -> dict:
    return {"type": "work", "item": asdict(item)}


def from_message(message: dict) -> WorkItem:
    data = dict(message["item"])
    return _KINDS[data["kind"]](**data)
