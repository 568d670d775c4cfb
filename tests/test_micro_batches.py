"""How many micro-batches take turns in the pipeline, and what the scheduler does with them."""

from __future__ import annotations

import mlx.core as mx
import pytest
from scheduler_helpers import complete, events, run

from refserver.cli import build_parser, make_config
from refserver.config import ConfigError
from refserver.engine.chunking import ChunkPolicy, ChunkSizer
from refserver.engine.interface import Finished, GenerationRequest
from refserver.engine.leader import default_micro_batches
from refserver.engine.scheduler import Scheduler, Sequence
from refserver.engine.work import Decode, Prefill

CPU, GPU = mx.Device(mx.DeviceType.cpu), mx.Device(mx.DeviceType.gpu)


@pytest.mark.parametrize(
    "stages, device, expected",
    [
        (1, CPU, 1),  # one rank: no round trip through another stage to hide
        (2, CPU, 4),
        (3, CPU, 6),
        (1, GPU, 1),
        (2, GPU, 2),  # a GPU's step costs about the same with more rows: keep them together
        (4, GPU, 4),
    ],
)
def test_default_micro_batches(stages, device, expected):
    assert default_micro_batches(stages, device) == expected


@pytest.mark.parametrize("flag, expected", [([], None), (["--micro-batches", "3"], 3)])
def test_the_flag_sets_the_micro_batches(flag, expected):
    config = make_config(build_parser().parse_args(["--model", "m", *flag]))
    assert config.micro_batches == expected


def test_the_flag_refuses_zero():
    with pytest.raises(ConfigError, match="--micro-batches must be >= 1, got 0"):
        make_config(build_parser().parse_args(["--model", "m", "--micro-batches", "0"]))


EOS = 0


def _sequence(name: str, first: int) -> Sequence:
    return Sequence(GenerationRequest(name, list(range(first, first + 6)), max_tokens=40))


def test_more_micro_batches_than_stages_keep_prefill_one_chunk_per_stage():
    chunks = ChunkSizer(ChunkPolicy(tokens=2))
    scheduler = Scheduler({EOS}, micro_batches=4, prefill_depth=2, chunks=chunks)
    sequences = [_sequence(f"s{i}", 10 * i + 1) for i in range(8)]
    for sequence in sequences:
        scheduler.add(sequence)
    first, second = scheduler.next_item(), scheduler.next_item()
    assert isinstance(first, Prefill) and isinstance(second, Prefill)
    assert scheduler.next_item() is None  # two stages: two chunks in flight
    complete(scheduler, first)
    complete(scheduler, second)

    issued = run(scheduler, in_flight=4)
    decodes = [item for item in issued if isinstance(item, Decode)]
    # Eight sequences, all running at once, spread over the four micro-batches, two each.
    widest = {batch: max(len(d.seqs) for d in decodes if d.batch == batch) for batch in range(4)}
    assert widest == {0: 2, 1: 2, 2: 2, 3: 2}
    for sequence in sequences:
        last = events(sequence)[-1]
        assert isinstance(last, Finished) and last.completion_tokens == 40


def test_prompts_admitted_together_go_to_different_micro_batches():
    chunks = ChunkSizer(ChunkPolicy(tokens=6))
    scheduler = Scheduler({EOS}, micro_batches=2, prefill_depth=2, chunks=chunks)
    first, second = _sequence("a", 1), _sequence("b", 11)
    scheduler.add(first)
    scheduler.add(second)
    body, last = scheduler.next_item(), scheduler.next_item()  # a's chunks: 5 tokens, then 1
    complete(scheduler, body)
    # b follows a into the pipeline before a has joined its micro-batch.
    assert (last.seq, scheduler.next_item().seq) == ("a", "b")
    assert first.batch != second.batch
