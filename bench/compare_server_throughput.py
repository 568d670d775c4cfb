"""refserver over HTTP vs in-process mlx_lm, side by side on one machine.

    python bench/compare_server_throughput.py --preset medium --tokens 128 --rounds 3

Measures, on the same model and in one run:
  baseline   in-process mlx_lm decode tok/s, one stream (generate_step, greedy)
  1 rank     refserver on 1 rank, one HTTP stream, decode tok/s
  2 ranks    refserver on 2 ranks, one HTTP stream, decode tok/s
  2 ranks x8 aggregate completion tok/s of 8 concurrent streams (wall time)
  idle CPU   CPU time of all ranks over 10 s with no requests, % of one core
and prints each ratio to the baseline (medians over the rounds). The end-of-
sequence token is suppressed with logit_bias so every stream runs to max_tokens.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from simcluster.parity import chat_prompt_tokens, reference_run
from simcluster.serve import ServerCluster
from simcluster.tinymodel import build_tiny_model

PROMPT = "Write a short story about a lighthouse keeper who finds a map."


def stream_decode_rate(address, tokens: int, eos_id: int) -> tuple[int, float, float]:
    """(completion tokens, seconds from the first to the last chunk with text, seconds in all).

    Like the baseline's clock, the decode clock starts at the first generated token.
    """
    body = {
        "model": "default_model",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {str(eos_id): -100},
    }
    started = time.perf_counter()
    first = last = None
    completion = 0
    connection = http.client.HTTPConnection(*address, timeout=600)
    connection.request("POST", "/v1/chat/completions", json.dumps(body))
    for raw in connection.getresponse():
        line = raw.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
            # The first chunk (the role) goes out before the prompt is processed.
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
    connection.close()
    return completion, (last - first), time.perf_counter() - started


def one_stream(address, tokens: int, eos_id: int) -> float:
    completion, decode_seconds, _ = stream_decode_rate(address, tokens, eos_id)
    return (completion - 1) / decode_seconds


def aggregate(address, tokens: int, eos_id: int, streams: int) -> float:
    totals = []

    def run():
        totals.append(stream_decode_rate(address, tokens, eos_id)[0])

    threads = [threading.Thread(target=run) for _ in range(streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(totals) / (time.perf_counter() - started)


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / ticks


def idle_cpu_percent(cluster: ServerCluster, seconds: float = 10.0) -> float:
    pids = [p.pid for p in cluster.ranks.processes]
    before = cpu_seconds(pids)
    time.sleep(seconds)
    return 100 * (cpu_seconds(pids) - before) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / args.preset, preset=args.preset)
        eos_id = json.loads((model / "config.json").read_text()).get("eos_token_id", 0)
        prompt = chat_prompt_tokens(model, PROMPT)
        results: dict[str, list[float]] = {}

        def record(name, value):
            results.setdefault(name, []).append(value)
            print(f"  {name}: {value:.2f}", flush=True)

        quiet = lambda _line: None  # noqa: E731
        with ServerCluster(1, model, sink=quiet) as one, ServerCluster(2, model, sink=quiet) as two:
            record("idle CPU % (2 ranks, 10 s)", idle_cpu_percent(two))
            for round_index in range(args.rounds):
                print(f"round {round_index}", flush=True)
                record("baseline mlx_lm tok/s", reference_run(model, prompt, args.tokens)[1])
                record("1 rank tok/s", one_stream((one.host, one.port), args.tokens, eos_id))
                record("2 ranks tok/s", one_stream((two.host, two.port), args.tokens, eos_id))
                record(
                    f"2 ranks x{args.streams} aggregate tok/s",
                    aggregate((two.host, two.port), args.tokens, eos_id, args.streams),
                )
    base = statistics.median(results["baseline mlx_lm tok/s"])
    print(f"\nmedians over {args.rounds} rounds ({args.preset}, {args.tokens} tokens):")
    for name, values in results.items():
        median = statistics.median(values)
        ratio = "" if "CPU" in name else f"  ratio to baseline {median / base:.3f}"
        print(f"  {name}: {median:.2f}{ratio}")


if __name__ == "__main__":
    main()
