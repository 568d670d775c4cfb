"""`refserver` / `python -m refserver`: one rank of the distributed server.

Start every rank with mlx.launch (or simcluster). Rank 0 serves HTTP; the other
ranks run their pipeline stage as rank 0 directs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .config import ClusterConfig, ConfigError, ServerConfig, api_keys_from_env
from .logs import setup_logging

log = logging.getLogger("refserver")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refserver", description=__doc__)
    parser.add_argument("--model", required=True, help="local model directory or HF repo id")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (rank 0)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--temperature", type=float, default=0.0, help="default temperature")
    parser.add_argument("--top-p", type=float, default=1.0, help="default top_p")
    parser.add_argument("--top-k", type=int, default=0, help="default top_k (0: off)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="default max_tokens")
    parser.add_argument("--max-tokens-cap", type=int, default=32768, help="largest max_tokens")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting before 429")
    parser.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")
    parser.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--api-key", action="append", help="require this bearer key (repeatable)")
    parser.add_argument("--allowed-origins", default="", help="comma-separated CORS origins")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--control-port", type=int, help="rank 0's control port")
    parser.add_argument("--connect-timeout", type=float, help="seconds to wait for peers")
    parser.add_argument("--heartbeat-timeout", type=float, help="seconds of peer silence")
    parser.add_argument("--step-timeout", type=float, help="seconds one step may take")
    parser.add_argument("--drain-seconds", type=float, default=30.0, help="grace on SIGTERM")
    return parser


def make_config(args) -> ServerConfig:
    cluster = ClusterConfig.from_env(
        args.model,
        control_port=args.control_port,
        connect_timeout=args.connect_timeout,
        heartbeat_timeout=args.heartbeat_timeout,
        step_timeout=args.step_timeout,
        drain_grace=args.drain_seconds + 10,
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
        api_keys=api_keys_from_env(args.api_key),
        allowed_origins=origins,
        log_level=args.log_level,
        drain_seconds=args.drain_seconds,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = make_config(args)
    except ConfigError as exc:
        print(f"refserver: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.cluster.rank, config.log_level)
    from .serve import run_rank

    return run_rank(config)


def install_drain_handler(drain) -> None:
    """SIGTERM and SIGINT drain the server instead of killing it mid-request."""

    def handler(signum, _frame):
        log.info("received %s: draining", signal.Signals(signum).name)
        threading.Thread(target=drain, daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
