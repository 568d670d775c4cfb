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


def stream_times(address, tokens: int, eos_id: int) -> tuple[int, list[float]]:
    """Stream one chat completion: (completion tokens, arrival time of each text chunk).

    Like the baseline's clock, decode timing starts at the first generated token
    (the role chunk goes out before the prompt is processed).
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
    times: list[float] = []
    completion = 0
    connection = http.client.HTTPConnection(*address, timeout=600)
    connection.request("POST", "/v1/chat/completions", json.dumps(body))
    for raw in connection.getresponse():
        line = raw.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
            delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
            # The template opens <think>: a random model's text arrives as reasoning.
            if delta.get("content") or delta.get("reasoning_content"):
                times.append(time.perf_counter())
    connection.close()
    return completion, times


def one_stream(address, tokens: int, eos_id: int) -> float:
    completion, times = stream_times(address, tokens, eos_id)
    return (completion - 1) / (times[-1] - times[0])


def aggregate(address, tokens: int, eos_id: int, streams: int) -> float:
    """Tokens/s of all streams together while every one of them is decoding.

    The window runs from the last stream's first token to the first stream's
    last token, so prompt processing at the start and stragglers at the end
    are left out; each stream's chunks count as completion/chunks tokens.
    """
    results = []

    def run():
        results.append(stream_times(address, tokens, eos_id))

    threads = [threading.Thread(target=run) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    start = max(times[0] for _, times in results)
    end = min(times[-1] for _, times in results)
    counted = sum(
        sum(1 for t in times if start < t <= end) * completion / len(times)
        for completion, times in results
    )
    return counted / (end - start)


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
    # Each round's ratio uses the baseline measured next to it: the machine drifts.
    bases = results["baseline mlx_lm tok/s"]
    print(f"\nmedians over {args.rounds} rounds ({args.preset}, {args.tokens} tokens):")
    for name, values in results.items():
        ratio = ""
        if "CPU" not in name:
            ratios = [v / b for v, b in zip(values, bases, strict=True)]
            ratio = f"  ratio to baseline {statistics.median(ratios):.3f}"
        print(f"  {name}: {statistics.median(values):.2f}{ratio}")


if __name__ == "__main__":
    main()
