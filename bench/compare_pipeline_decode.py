"""Decode tok/s of the N-rank pipeline vs single-process mlx_lm, side by side.

    python bench/compare_pipeline_decode.py --preset medium -n 2 --tokens 128 --rounds 3

Runs alternate (baseline, pipeline, baseline, ...) on the same machine and prompt,
and the ratio of the medians is printed. Absolute numbers are noisy; ratios are not.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from simcluster.parity import chat_prompt_tokens, pipeline_run, reference_run
from simcluster.tinymodel import build_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--model", type=Path)
    parser.add_argument("-n", type=int, default=2)
    parser.add_argument("--split")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_tiny_model(Path(tmp) / args.preset, preset=args.preset)
        prompt = chat_prompt_tokens(model)
        baseline, pipeline = [], []
        for round_index in range(args.rounds):
            ref_tokens, ref_tps = reference_run(model, prompt, args.tokens)
            ours, ours_tps = pipeline_run(
                args.n, model, prompt, args.tokens, args.split, sink=_quiet
            )
            assert ours == ref_tokens, "pipeline tokens differ from mlx_lm"
            baseline.append(ref_tps)
            pipeline.append(ours_tps)
            print(f"round {round_index}: mlx_lm {ref_tps:.1f} tok/s, pipeline {ours_tps:.1f} tok/s")
    ratio = statistics.median(pipeline) / statistics.median(baseline)
    print(
        f"decode tok/s, median of {args.rounds}: mlx_lm {statistics.median(baseline):.1f}, "
        f"{args.n}-rank pipeline {statistics.median(pipeline):.1f}, ratio {ratio:.3f}"
    )


def _quiet(_line: str) -> None:
    pass


if __name__ == "__main__":
    main()
