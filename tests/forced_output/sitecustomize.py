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
"""

from __future__ import annotations

import dataclasses
import json
import os

_FILE = os.environ.get("REFSERVER_TEST_FORCED_TOKENS")
_FAILING_SEED = os.environ.get("REFSERVER_TEST_FAILING_SEED")


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


if _FILE:
    _install()
if _FAILING_SEED:
    _install_failure(int(_FAILING_SEED))
