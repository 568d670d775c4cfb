"""A request's own failure ends that request alone: rank 0's scheduler and sampler
without ranks (fake logits). The same on real ranks: test_reliability_sampling.py."""

from __future__ import annotations

import pytest
from scheduler_helpers import VOCAB, events, run

from refserver.engine import sampling
from refserver.engine.interface import (
    ErrorEvent,
    Finished,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from refserver.engine.scheduler import Scheduler, Sequence

EOS = VOCAB - 1


def _sequence(name: str, **settings) -> Sequence:
    request = GenerationRequest(name, [1, 2, 3], max_tokens=4, sampling=SamplingParams(**settings))
    return Sequence(request)


EDGES = [
    {"seed": -1},
    {"seed": -(2**63)},
    {"seed": 2**64 - 1},
    {"seed": 2**80},
    {"top_k": VOCAB},
    {"top_k": VOCAB + 1},
    {"top_k": 2**31 - 1},
    {"top_k": 1},
    {"top_p": 1e-9},
    {"min_p": 1.0},
    {"temperature": 1e-30},
    {"temperature": 2.0, "seed": -5},
    {"repetition_penalty": 100.0},
    {"presence_penalty": -2.0, "frequency_penalty": 2.0},
    {"logit_bias": {0: -100.0, VOCAB - 2: 100.0}},
    {"logprobs": True, "top_logprobs": 20},
    {"logprobs": True, "top_logprobs": VOCAB + 10},
]


@pytest.mark.parametrize("settings", EDGES, ids=[str(s) for s in EDGES])
def test_sampling_at_its_edges_ends_normally_or_fails_the_request_alone(settings):
    scheduler = Scheduler({EOS}, max_batch=4)
    edge = _sequence("edge", temperature=settings.pop("temperature", 1.0), **settings)
    plain = _sequence("plain")
    scheduler.add(edge)
    scheduler.add(plain)
    run(scheduler, 40)
    edge_events, plain_events = events(edge), events(plain)
    assert isinstance(plain_events[-1], Finished) and plain_events[-1].completion_tokens == 4
    assert [e.token_id for e in plain_events if isinstance(e, TokenEvent)] == [7, 7, 7, 7]
    last = edge_events[-1]
    assert isinstance(last, Finished) or last.code == "request_failed", last
    assert not scheduler.active


def test_an_empty_prompt_fails_its_request_only():
    """The APIs refuse one; an engine caller that sends one must not reach the ranks."""
    scheduler = Scheduler({EOS}, max_batch=4)
    empty = Sequence(GenerationRequest("empty", [], max_tokens=4))
    fine = _sequence("fine")
    scheduler.add(empty)
    scheduler.add(fine)
    issued = run(scheduler, 40)
    (failure,) = events(empty)
    assert failure.code == "request_failed" and "no tokens" in failure.message
    assert isinstance(events(fine)[-1], Finished)
    assert all(getattr(item, "seq", None) != "empty" for item in issued)


def test_a_sampler_that_cannot_be_made_fails_its_request_only(monkeypatch):
    real = sampling.SequenceSampler.__init__

    def broken(self, params, prompt_tokens):
        if params.seed == 13:
            raise RuntimeError("no sampler for you")
        real(self, params, prompt_tokens)

    monkeypatch.setattr(sampling.SequenceSampler, "__init__", broken)
    scheduler = Scheduler({EOS}, max_batch=4)
    doomed, fine = _sequence("doomed", seed=13), _sequence("fine")
    scheduler.add(doomed)
    scheduler.add(fine)
    scheduler.flush()
    assert events(doomed) == [
        ErrorEvent("this request failed: RuntimeError: no sampler for you", "request_failed")
    ]
    run(scheduler, 20)
    assert isinstance(events(fine)[-1], Finished)


def test_a_row_whose_sampling_raises_leaves_its_batch_and_the_others_finish(monkeypatch):
    real = sampling.SequenceSampler.choose
    calls = {"n": 0}

    def flaky(self, logprobs_row, logits_row):
        if self.params.seed == 13:
            calls["n"] += 1
            if calls["n"] == 2:  # mid-stream: after its first token
                raise ValueError("injected")
        return real(self, logprobs_row, logits_row)

    monkeypatch.setattr(sampling.SequenceSampler, "choose", flaky)
    scheduler = Scheduler({EOS}, max_batch=4)
    rows = [_sequence("a"), _sequence("doomed", temperature=1.0, seed=13), _sequence("b")]
    for sequence in rows:
        scheduler.add(sequence)
    issued = run(scheduler, 40)
    a, doomed, b = (events(s) for s in rows)
    assert doomed[-1] == ErrorEvent("this request failed: ValueError: injected", "request_failed")
    assert sum(isinstance(e, TokenEvent) for e in doomed) == 1
    for received in (a, b):
        assert isinstance(received[-1], Finished) and received[-1].completion_tokens == 4
    # Every rank frees the failed row's cache with a later item.
    assert any("doomed" in item.drop for item in issued)
    later = issued[[i for i, item in enumerate(issued) if "doomed" in item.drop][0] :]
    assert all("doomed" not in getattr(item, "seqs", ()) for item in later)
