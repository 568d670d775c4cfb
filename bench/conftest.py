"""Options, fixtures and the closing ratio table of the benchmarks (see bench/README.md)."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass

import pytest
from inprocess import InProcessMLX
from paired import Paired
from targets import Deployment, running, target_specs

SUMMARY = pytest.StashKey[list]()
OPTION_NAMES = (
    "preset",
    "model",
    "ranks",
    "split",
    "url",
    "peers",
    "rounds",
    "tokens",
    "prompt_tokens",
    "streams",
    "idle_seconds",
)


@dataclass(frozen=True)
class Workload:
    """How much each benchmark asks for (the command-line options)."""

    rounds: int
    tokens: int
    prompt_tokens: int
    streams: int
    idle_seconds: float


def pytest_addoption(parser):
    group = parser.getgroup("refserver benchmarks")
    add = group.addoption
    add("--preset", default="medium", choices=("tiny", "medium"), help="random model to build")
    add("--model", help="a model directory or Hugging Face repo id (instead of --preset)")
    add("--ranks", type=int, default=2, help="ranks of the pipeline (default 2)")
    add("--split", help="MINIMAX_PIPELINE_SPLIT of the N-rank pipeline (default: even)")
    add("--url", help="benchmark this running server (…/v1) instead; needs --model")
    add("--peers", action="store_true", help="also mlx_lm.server alone and tensor-parallel")
    add("--rounds", type=int, default=3, help="rounds per benchmark (default 3)")
    add("--tokens", type=int, default=128, help="tokens generated per stream (default 128)")
    add("--prompt-tokens", type=int, default=384, help="length of a long prompt (default 384)")
    add("--streams", type=int, default=8, help="concurrent streams (default 8)")
    add("--idle-seconds", type=float, default=10.0, help="idle CPU window (default 10)")


def pytest_configure(config):
    if config.getoption("--url") and not config.getoption("--model"):
        raise pytest.UsageError("--url needs --model: the baseline loads that model here")
    json_path = config.getoption("benchmark_json", None)
    if json_path is not None:  # pytest-benchmark writes it at the end, into a folder that exists
        json_path.parent.mkdir(parents=True, exist_ok=True)
    config.stash[SUMMARY] = []


def pytest_generate_tests(metafunc):
    if "target" in metafunc.fixturenames:
        option = metafunc.config.getoption
        specs = target_specs(option("--ranks"), option("--peers"), option("--url"))
        ids = [spec.name for spec in specs]
        metafunc.parametrize("target", specs, ids=ids, indirect=True, scope="session")


@pytest.fixture(scope="session")
def deployment(request, tmp_path_factory) -> Deployment:
    option = request.config.getoption
    model = option("--model")
    if model is None:
        from simcluster.tinymodel import build_tiny_model

        preset = option("--preset")
        model = str(build_tiny_model(tmp_path_factory.mktemp("models") / preset, preset=preset))
    return Deployment(model, option("--split"), option("--url"))


@pytest.fixture(scope="session")
def workload(request) -> Workload:
    option = request.config.getoption
    return Workload(
        option("--rounds"),
        option("--tokens"),
        option("--prompt-tokens"),
        option("--streams"),
        option("--idle-seconds"),
    )


@pytest.fixture(scope="session")
def baseline(deployment) -> InProcessMLX:
    return InProcessMLX(deployment.model)


@pytest.fixture(scope="session")
def target(request, deployment):
    with running(request.param, deployment) as target:
        yield target


@pytest.fixture
def paired(benchmark, workload, request) -> Paired:
    params = dict(request.node.callspec.params)
    target = params.pop("target")
    row = request.node.originalname + "".join(f"[{value}]" for value in params.values())
    return Paired(benchmark, workload.rounds, request.config.stash[SUMMARY], row, target.name)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Say in the JSON what ran where (pytest-benchmark adds the machine and the date)."""
    output_json["refserver"] = {name: config.getoption(name) for name in OPTION_NAMES}


def pytest_terminal_summary(terminalreporter, config):
    """Every ratio (and figure shown beside them) as a table, one column per target
    (the README's table comes from it)."""
    summary = config.stash.get(SUMMARY, [])
    columns = list(dict.fromkeys(column for _, column, _ in summary))
    table: dict[str, dict[str, float]] = {}
    for row, column, figures in summary:
        for name, value in figures.items():
            table.setdefault(f"{row} {name}", {})[column] = value
    if not table:
        return
    write = terminalreporter.write_line
    write(f"\nratios, {time.strftime('%Y-%m-%d')}, {_machine()}:")
    write("| benchmark | " + " | ".join(columns) + " |")
    write("|---" * (len(columns) + 1) + "|")
    for name, values in table.items():
        cells = (f"{values[c]:.3f}" if c in values else "" for c in columns)
        write(f"| {name} | " + " | ".join(cells) + " |")


def _machine() -> str:
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"
