"""`refserver plan`: print the split that fits each host, and the command that runs it."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .engine.kv_budget import parse_size
from .footprint import Footprint, FootprintError, read_footprint
from .plan import DEFAULT_HEADROOM, Host, Plan, PlanError, plan_split
from .sizes import format_size
from .split import SPLIT_VARIABLE

DESCRIPTION = """\
Choose MINIMAX_PIPELINE_SPLIT from the model's tensors (config.json and the
safetensors headers only, never the weights) and each host's memory, keeping room
for the KV of --concurrency sequences of --context tokens and --headroom of every
host's memory for the system. Rank 0 (the first host) is the last stage, with the
norm and head; the last rank holds the embedding.

hosts.json is mlx.launch's hostfile; each entry may add "memory" ("192GB") and
"speed" (relative, e.g. 1.5 for a Mac half again as fast), which mlx.launch ignores.

exit status: 0 with a plan; 1 when the model cannot fit (the message says by how
much); 2 for wrong arguments or unreadable model files."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refserver plan",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--model", required=True, help="local model directory or Hugging Face repo id")
    add("--memory", help="each host's memory in hostfile order, e.g. 192GB,96GB")
    add("--hostfile", help='mlx.launch\'s hosts.json, with a "memory" per entry')
    add("--speed", help="relative speed of each host, e.g. 1,1.5 (default: all equal)")
    add("--context", type=int, default=32768, help="tokens per sequence to keep KV room for")
    add("--concurrency", type=int, default=4, help="sequences at once to keep KV room for")
    add(
        "--headroom",
        type=float,
        default=DEFAULT_HEADROOM,
        help="fraction of each host's memory left to the system and activations "
        f"(default: {DEFAULT_HEADROOM}; macOS wires about 75%% of a Mac's memory for its GPU)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        hosts = _hosts(args)
        footprint = read_footprint(args.model)
    except (PlanError, FootprintError, OSError, ValueError, KeyError) as exc:
        print(f"refserver plan: error: {exc}", file=sys.stderr)
        return 2
    kv_tokens = args.context * args.concurrency
    try:
        plan = plan_split(footprint, hosts, kv_tokens, args.headroom)
    except PlanError as exc:
        print(f"refserver plan: {exc}", file=sys.stderr)
        return 1
    print(describe(plan, footprint, args))
    return 0


def _hosts(args) -> list[Host]:
    """Hosts in rank order: hosts.json's entries, --memory and --speed overriding theirs."""
    entries = json.loads(Path(args.hostfile).read_text()) if args.hostfile else []
    memory = args.memory.split(",") if args.memory else [e.get("memory") for e in entries]
    if not memory or None in memory:
        raise PlanError('give each host\'s memory: --memory 192GB,96GB or "memory" in hosts.json')
    if entries and len(entries) != len(memory):
        raise PlanError(f"{len(entries)} hosts in {args.hostfile} but {len(memory)} memory sizes")
    entries = entries or [{} for _ in memory]
    speeds = args.speed.split(",") if args.speed else [e.get("speed", 1.0) for e in entries]
    if len(speeds) != len(memory) or any(float(speed) <= 0 for speed in speeds):
        raise PlanError(f"give one speed > 0 per host ({len(memory)}), got {speeds}")
    return [
        Host(entry.get("ssh", f"host {i}"), _size(str(size)), float(speed))
        for i, (entry, size, speed) in enumerate(zip(entries, memory, speeds, strict=True))
    ]


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError:
        raise PlanError(f"a host's memory must be a size such as 192GB, got {text!r}") from None


def describe(plan: Plan, footprint: Footprint, args) -> str:
    """The plan as printed: the split, each rank's memory, and the command to run."""
    lines = [
        f"{args.model}: {footprint.num_layers} layers, "
        f"{format_size(footprint.total_bytes)} of weights, "
        f"{format_size(footprint.kv_bytes_per_token * footprint.num_layers)} of KV per token",
        f"KV room for {args.concurrency} x {args.context} tokens; {args.headroom:.0%} of each "
        "host's memory left to the system",
        "",
        f"{SPLIT_VARIABLE}={plan.split}",
        "",
    ]
    last = len(plan.ranks) - 1
    for rank in plan.ranks:
        parts = " + embedding" if rank.rank == last else ""
        parts += " + norm/head" if rank.rank == 0 else ""
        lines.append(
            f"rank {rank.rank} ({rank.host.name}, {format_size(rank.host.memory_bytes)}): layers "
            f"{rank.layers.start}-{rank.layers.stop - 1}{parts}: {format_size(rank.weights_bytes)} "
            f"weights + {format_size(rank.kv_bytes)} KV = {format_size(rank.needed_bytes)} of "
            f"{format_size(rank.usable_bytes)} usable"
        )
    hostfile = args.hostfile or "hosts.json"
    serve = ["python", "-m", "refserver", "--model", args.model]
    if plan.kv_budget_bytes:
        serve += ["--kv-budget", f"{-(-plan.kv_budget_bytes // 10**6)}MB"]  # rounded up
    launch = ["mlx.launch", "--backend", "ring", "--hostfile", hostfile]
    launch += ["--env", f"{SPLIT_VARIABLE}={plan.split}", "--"]
    lines += ["", shlex.join(launch) + " \\", "  " + shlex.join(serve)]
    return "\n".join(lines)
