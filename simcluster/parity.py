"""Token parity: greedy tokens through N ranks against single-process mlx_lm.

`pipeline_run` launches the ranks (each runs `python -m simcluster.parity`, the
worker below); `reference_run` computes the reference in this process with
mlx_lm's own generate_step; the caller compares token for token.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .launch import LocalCluster

DEFAULT_PROMPT = "Write a short story about a lighthouse keeper who finds a map."


class DecodeClock:
    """Decode tokens/s: tokens after the first, over the time since the first arrived."""

    def __init__(self):
        self.times: list[float] = []

    def tick(self, _token=None) -> None:
        self.times.append(time.perf_counter())

    def rate(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


@dataclass(frozen=True)
class ParityResult:
    reference: list[int]
    pipeline: list[int]

    @property
    def matching_prefix(self) -> int:
        count = 0
        for ours, theirs in zip(self.pipeline, self.reference, strict=False):
            if ours != theirs:
                break
            count += 1
        return count

    @property
    def exact(self) -> bool:
        return self.pipeline == self.reference


def chat_prompt_tokens(model_dir: Path, text: str = DEFAULT_PROMPT) -> list[int]:
    """The prompt as token ids, through the model's own chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    messages = [{"role": "user", "content": text}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def reference_run(
    model_dir: Path,
    prompt: list[int],
    max_tokens: int,
    logits_processors=None,
    prefill_step_size: int = 2048,
) -> tuple[list[int], float]:
    """Greedy tokens from single-process mlx_lm (the correctness bar), and decode tok/s.

    `logits_processors` (mlx_lm.sample_utils.make_logits_processors) apply penalties;
    `prefill_step_size` is the prompt chunk (the server's --prefill-chunk to compare with).
    """
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(model_dir))
    clock = DecodeClock()
    tokens = []
    steps = generate_step(
        mx.array(prompt),
        model,
        max_tokens=max_tokens,
        logits_processors=logits_processors,
        prefill_step_size=prefill_step_size,
    )
    for token, _ in steps:
        clock.tick()
        tokens.append(int(token))
    return tokens, clock.rate()


def reference_tokens(
    model_dir: Path,
    prompt: list[int],
    max_tokens: int,
    logits_processors=None,
    prefill_step_size: int = 2048,
) -> list[int]:
    return reference_run(model_dir, prompt, max_tokens, logits_processors, prefill_step_size)[0]


def pipeline_tokens(*args, **kwargs) -> list[int]:
    """Greedy tokens through `world_size` local ranks (see pipeline_run)."""
    return pipeline_run(*args, **kwargs)[0]


def pipeline_run(
    world_size: int,
    model_dir: Path,
    prompt: list[int],
    max_tokens: int,
    split: str | None = None,
    per_rank_env: dict[int, dict[str, str]] | None = None,
    timeout: float = 600.0,
    sink=None,
) -> tuple[list[int], float]:
    """Greedy tokens through `world_size` local ranks, and rank 0's decode tok/s."""
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        output = Path(tmp) / "tokens.json"
        command = worker_command(model_dir, prompt, max_tokens, output)
        env = {"MINIMAX_PIPELINE_SPLIT": split} if split else {}
        with LocalCluster(world_size, command, env, per_rank_env, sink) as cluster:
            cluster.wait(timeout)
        result = json.loads(output.read_text())
        return result["tokens"], result["decode_tps"]


def worker_command(
    model_dir: Path, prompt: list[int], max_tokens: int, output: Path, *extra: str
) -> list[str]:
    """The argv of one parity rank."""
    return [
        sys.executable,
        "-m",
        "simcluster.parity",
        "--model",
        str(model_dir),
        "--prompt-tokens",
        ",".join(map(str, prompt)),
        "--tokens",
        str(max_tokens),
        "--output",
        str(output),
        *extra,
    ]


def worker(argv: list[str] | None = None) -> int:
    """One rank of a parity run (started by LocalCluster or mlx.launch)."""
    from refserver.cluster import StartupError, start
    from refserver.config import ClusterConfig, ConfigError
    from refserver.greedy import generate_greedy
    from refserver.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m simcluster.parity")
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-tokens", required=True)
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--connect-timeout", type=float, default=None)
    args = parser.parse_args(argv)
    try:
        config = ClusterConfig.from_env(args.model, connect_timeout=args.connect_timeout)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.rank)
    try:
        cluster = start(config)
    except StartupError as exc:
        logging.getLogger("simcluster.parity").error("%s", exc)
        return 2
    prompt = [int(t) for t in args.prompt_tokens.split(",")]
    clock = DecodeClock()
    tokens = generate_greedy(cluster.stage, prompt, args.tokens, on_token=clock.tick)
    if config.rank == 0:
        Path(args.output).write_text(json.dumps({"tokens": tokens, "decode_tps": clock.rate()}))
    return 0


if __name__ == "__main__":
    sys.exit(worker())
