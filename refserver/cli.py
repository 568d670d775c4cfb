"""`refserver` / `python -m refserver`: one rank of the distributed server.

Start every rank with mlx.launch (or simcluster). Rank 0 serves HTTP; the other
ranks run their pipeline stage as rank 0 directs.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import ClusterConfig, ConfigError, ServerConfig, api_keys_from_env
from .engine.chunking import DEFAULT_PREFILL_CHUNK, ChunkPolicy
from .engine.kv_budget import parse_size
from .logs import setup_logging

ENVIRONMENT = """\
environment: MLX_RANK and MLX_HOSTFILE (set by mlx.launch) place this rank;
MINIMAX_PIPELINE_SPLIT lists the layers per rank, rank 0 first;
REFSERVER_API_KEY adds comma-separated API keys to --api-key;
REFSERVER_CLUSTER_TOKEN (the same on every rank) makes rank 0 refuse control
connections without it; REFSERVER_CONTROL_PORT sets --control-port.

`refserver plan --help`: choose MINIMAX_PIPELINE_SPLIT from each host's memory.

exit status: 0 after a drain (SIGTERM, SIGINT, SIGHUP); non-zero when start-up failed
or a rank was lost (the log, whose lines carry "rank N", says why)."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends each option's default, when it has one."""

    def _get_help_string(self, action):
        if action.default in (None, "", argparse.SUPPRESS) or "(default" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refserver", description=__doc__, formatter_class=_HelpFormatter, epilog=ENVIRONMENT
    )
    add = parser.add_argument
    add("--model", required=True, help="local model directory or HF repo id")
    add("--host", default="127.0.0.1", help="HTTP bind address (rank 0)")
    add("--port", type=int, default=8080, help="HTTP port (rank 0)")
    add("--temperature", type=float, default=0.0, help="default temperature")
    add("--top-p", type=float, default=1.0, help="default top_p")
    add("--top-k", type=int, default=0, help="default top_k (0: off)")
    add("--max-tokens", type=int, default=4096, help="default max_tokens")
    add("--max-tokens-cap", type=int, default=32768, help="largest max_tokens a request may ask")
    add("--max-queue", type=int, default=64, help="requests waiting beyond --max-batch; then 429")
    add("--max-batch", type=int, default=8, help="sequences decoded together")
    add(
        "--prefill-chunk",
        default=DEFAULT_PREFILL_CHUNK,
        help="prompt tokens per prefill chunk: a count (512), or a time per chunk on the "
        "slowest rank that sizes chunks to the hardware, in milliseconds (250ms) or in a "
        "running stream's decode steps (8steps, the default: beside a long prompt a "
        "stream's longest gap is about that many of its steps); smaller keeps running "
        "streams smoother, larger prefills long prompts a little faster",
    )
    add(
        "--kv-budget",
        help="KV memory each rank may use for running sequences and cached prefixes, "
        "e.g. 512MB or 40GB (default: half the memory left after the rank's weights)",
    )
    add(
        "--prefix-cache",
        type=int,
        default=65536,
        help="prompt tokens whose KV every rank keeps for reuse by later requests (0: off)",
    )
    add("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="larger bodies get 413")
    add("--client-timeout", type=int, default=60, help="seconds before a stalled client is dropped")
    add("--api-key", action="append", help="require this bearer key (repeatable)")
    add("--allowed-origins", default="", help="comma-separated CORS origins (default: none)")
    add("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    add("--control-port", type=int, help="rank 0's control port (default: last ring port + 1)")
    add("--connect-timeout", type=float, help="seconds to wait for peers at start-up (default: 60)")
    add("--heartbeat-timeout", type=float, help="seconds before a silent peer is lost (default: 2)")
    add(
        "--step-timeout",
        type=float,
        help="seconds one pipeline step may take, the last resort for a stuck ring; keep it "
        "far above a prefill chunk's time on the slowest rank times the ranks (default: 120)",
    )
    add("--drain-seconds", type=float, default=30.0, help="on SIGTERM, time to finish requests")
    add(
        "--chat-template-args",
        type=_template_args,
        help="JSON object of chat template keyword arguments used by default, e.g. "
        "'{\"enable_thinking\": false}'; a request's chat_template_kwargs (or Anthropic's "
        "thinking) overrides them key by key",
    )
    return parser


def make_config(args) -> ServerConfig:
    # At least four heartbeats per timeout, and at most one a second.
    interval = None if args.heartbeat_timeout is None else min(1.0, args.heartbeat_timeout / 4)
    cluster = ClusterConfig.from_env(
        args.model,
        control_port=args.control_port,
        connect_timeout=args.connect_timeout,
        heartbeat_interval=interval,
        heartbeat_timeout=args.heartbeat_timeout,
        step_timeout=args.step_timeout,
        drain_grace=args.drain_seconds + 10,
        kv_budget_bytes=_size(args.kv_budget),
    )
    origins = tuple(o.strip() for o in args.allowed_origins.split(",") if o.strip())
    return ServerConfig(
        cluster=cluster,
        host=args.host,
        port=args.port,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        max_tokens_cap=args.max_tokens_cap,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        max_body_bytes=args.max_body_bytes,
        client_timeout=args.client_timeout,
        api_keys=api_keys_from_env(args.api_key),
        allowed_origins=origins,
        log_level=args.log_level,
        drain_seconds=args.drain_seconds,
        prefill_chunk=_chunk_policy(args.prefill_chunk),
        prefix_cache_tokens=args.prefix_cache,
        chat_template_args=args.chat_template_args or {},
    )


def _template_args(text: str) -> dict:
    """--chat-template-args: a JSON object (argparse reports the error with the flag)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _size(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _chunk_policy(text: str) -> ChunkPolicy:
    try:
        return ChunkPolicy.parse(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plan"]:  # a tool of its own, not a rank: see plan_command.py
        from .plan_command import main as plan

        return plan(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        config = make_config(args)
    except ConfigError as exc:
        print(f"refserver: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.cluster.rank, config.log_level)
    from .serve import run_rank

    return run_rank(config)
