"""Test only: make rank 0 "sample" scripted tokens, so that a random model writes
reasoning and tool calls. Never part of the product.

Python imports this module at start-up when its directory is on PYTHONPATH (the e2e
tests put it there for the rank processes). It does nothing unless the environment
variable REFSERVER_TEST_FORCED_TOKENS names a JSON file::

    {"tokenizer": "<model dir>/tokenizer.json", "scripts": {"<marker>": [token ids]}}

A sequence whose prompt, decoded, contains a marker (the one found last, if several)
takes that script's tokens instead of the sampled ones, one per step, until the script
ends (then it samples freely). The ranks still compute every step; only the token that
reaches the API is replaced (steps decoded one ahead are fed the sampled token, which a
random model does not mind). The file is read again for each new sequence, so a test
may add scripts while the cluster runs.

With REFSERVER_TEST_FAILING_SEED set, a sequence sampled with that seed has its
sampler raise at its second token: one request's own failure, injected.

With REFSERVER_TEST_SLOW_STEP="prefill:6" (or "decode:6"), the first work item of that
kind the rank runs spends at least 6 s inside one mx.eval first: a rank deep in a long
MLX op (its heartbeats must go on). It prints "slow step: computing for 6 s" first
and "slow step: one mx.eval of N s" after.
"""

from __future__ import annotations

import dataclasses
import json
import os

_FILE = os.environ.get("REFSERVER_TEST_FORCED_TOKENS")
_FAILING_SEED = os.environ.get("REFSERVER_TEST_FAILING_SEED")
_SLOW_STEP = os.environ.get("REFSERVER_TEST_SLOW_STEP")


def _script_for(prompt_tokens: list[int], decoders: dict) -> list[int]:
    with open(_FILE, encoding="utf-8") as file:
        config = json.load(file)
    path = config["tokenizer"]
    if path not in decoders:
        from tokenizers import Tokenizer

        decoders[path] = Tokenizer.from_file(path)
    prompt = decoders[path].decode(prompt_tokens, skip_special_tokens=False)
    # The marker written last wins: a later turn's prompt repeats the earlier turns.
    found = [(prompt.rfind(marker), marker) for marker in config["scripts"]]
    found = [(at, marker) for at, marker in found if at >= 0]
    return list(config["scripts"][max(found)[1]]) if found else []


def _install() -> None:
    from refserver.engine import sampling

    decoders: dict = {}
    sample_init = sampling.SequenceSampler.__init__
    sampled_events = sampling.Draw.events

    def init(self, params, prompt_tokens):
        sample_init(self, params, prompt_tokens)
        self.forced_tokens = _script_for(prompt_tokens, decoders)

    def events(self):
        chosen = []
        for sampler, event in zip(self.samplers, sampled_events(self), strict=True):
            if sampler.forced_tokens:
                event = dataclasses.replace(event, token_id=sampler.forced_tokens.pop(0))
            chosen.append(event)
        return chosen

    sampling.SequenceSampler.__init__ = init
    sampling.Draw.events = events


def _install_failure(seed: int) -> None:
    from refserver.engine import sampling

    choose = sampling.SequenceSampler.choose

    def failing(self, logprobs_row, logits_row):
        if self.params.seed == seed:
            self.draws = getattr(self, "draws", 0) + 1
            if self.draws == 2:
                raise RuntimeError("injected sampler failure")
        return choose(self, logprobs_row, logits_row)

    sampling.SequenceSampler.choose = failing


def _long_mlx_op(seconds: float) -> float:
    """Compute in one mx.eval for at least `seconds`: longer chains of matrix products,
    each sized by the last one's time, until one takes that long; return its time."""
    import time

    import mlx.core as mx

    links = 32
    while True:
        x = mx.ones((256, 256)) / 256
        for _ in range(links):
            x = x @ x
        started = time.monotonic()
        mx.eval(x)
        took = time.monotonic() - started
        if took >= seconds:
            return took
        links = int(links * max(2.0, 1.5 * seconds / took))


def _install_slow_step(kind: str, seconds: float) -> None:
    import sys

    from refserver.engine import executor, work

    slow_kind = {"prefill": work.Prefill, "decode": work.Decode}[kind]
    run = executor.StageExecutor.run
    done = []

    def slow_run(self, item, inputs=None):
        if not done and isinstance(item, slow_kind):
            print(f"slow step: computing for {seconds:g} s", file=sys.stderr, flush=True)
            done.append(_long_mlx_op(seconds))
            print(f"slow step: one mx.eval of {done[0]:.1f} s", file=sys.stderr, flush=True)
        return run(self, item, inputs)

    executor.StageExecutor.run = slow_run


if _FILE:
    _install()
if _FAILING_SEED:
    _install_failure(int(_FAILING_SEED))
if _SLOW_STEP:
    _install_slow_step(_SLOW_STEP.split(":")[0], float(_SLOW_STEP.split(":")[1]))
