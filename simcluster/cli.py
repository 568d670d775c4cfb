"""`simcluster`: tiny models, token parity and local multi-rank servers."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

PRESETS = ("tiny", "medium")


def _model_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", type=Path, help="an existing model directory")
    source.add_argument(
        "--preset", choices=PRESETS, default="tiny", help="build a random model (default tiny)"
    )


def _resolve_model(args, workdir: Path) -> Path:
    if args.model is not None:
        return args.model
    from .tinymodel import build_tiny_model

    return build_tiny_model(workdir / args.preset, preset=args.preset)


def cmd_tiny_model(args) -> int:
    from .tinymodel import build_tiny_model

    path = build_tiny_model(
        args.directory,
        preset=args.preset,
        layers=args.layers,
        hidden=args.hidden,
        experts=args.experts,
        seed=args.seed,
        quantize_bits=args.quantize,
    )
    print(path)
    return 0


def cmd_parity(args) -> int:
    from .launch import RankFailed
    from .parity import ParityResult, chat_prompt_tokens, pipeline_tokens, reference_tokens

    with tempfile.TemporaryDirectory(prefix="simcluster-") as tmp:
        model = _resolve_model(args, Path(tmp))
        prompt = chat_prompt_tokens(model)
        try:
            ours = pipeline_tokens(args.n, model, prompt, args.tokens, args.split)
        except (RankFailed, TimeoutError) as exc:
            print(f"parity: {exc}", file=sys.stderr)
            return 1
        result = ParityResult(reference_tokens(model, prompt, args.tokens), ours)
    print(
        f"parity: {result.matching_prefix}/{len(result.reference)} tokens match "
        f"({args.n} ranks, split {args.split or 'even'})"
    )
    if not result.exact:
        print(f"reference: {result.reference}\npipeline:  {result.pipeline}", file=sys.stderr)
    return 0 if result.exact else 1


def cmd_serve(args) -> int:
    from .launch import RankFailed
    from .serve import ServerCluster

    # SIGTERM (a supervisor, `kill`) stops the ranks as Ctrl-C does: each drains first.
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="simcluster-") as tmp:
        model = _resolve_model(args, Path(tmp))
        cluster = ServerCluster(
            args.n, model, args.split, args.host, args.port, tuple(args.refserver_args)
        )
        try:
            cluster.start()
            print(f"serving {model} on {args.n} ranks at {cluster.base_url}", flush=True)
            cluster.watch()
        except (RankFailed, TimeoutError) as exc:
            print(f"simcluster serve: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("simcluster serve: stopping every rank", file=sys.stderr)
        finally:
            # A second Ctrl-C or SIGTERM must not cut the stop short (before its SIGKILLs).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            cluster.ranks.stop()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simcluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("tiny-model", help="build a tiny random MiniMax-shaped model")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--preset", choices=PRESETS, default="tiny")
    tiny.add_argument("--layers", type=int)
    tiny.add_argument("--hidden", type=int)
    tiny.add_argument("--experts", type=int)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--quantize", type=int, choices=(4, 8), help="quantize to 4 or 8 bits")
    tiny.set_defaults(run=cmd_tiny_model)

    parity = commands.add_parser("parity", help="greedy tokens through N ranks vs mlx_lm")
    parity.add_argument("-n", type=int, default=2, help="number of ranks (default 2)")
    parity.add_argument("--split", help="MINIMAX_PIPELINE_SPLIT for the ranks")
    parity.add_argument("--tokens", type=int, default=64)
    _model_args(parity)
    parity.set_defaults(run=cmd_parity)

    serve = commands.add_parser("serve", help="refserver on N local ranks")
    serve.add_argument("-n", type=int, default=2, help="number of ranks (default 2)")
    serve.add_argument("--split", help="MINIMAX_PIPELINE_SPLIT for the ranks")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    _model_args(serve)
    serve.add_argument(
        "refserver_args", nargs="*", help="after --: flags for every rank, e.g. -- --api-key K"
    )
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
