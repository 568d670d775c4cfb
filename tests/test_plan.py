"""`refserver plan`: the split from each host's memory, on made-up footprints, header-only
models of the simcluster presets and a real tiny model (no weights are read or downloaded)."""

from __future__ import annotations

import json
import struct

import pytest

from refserver import plan_command
from refserver.footprint import Footprint, read_footprint
from refserver.plan import Host, PlanError, plan_split
from refserver.split import PipelineSplit
from simcluster.tinymodel import PRESETS

GB = 10**9

# A MiniMax-M2-like 4-bit model: 62 layers of ~2.1 GB, KV of 8 heads x 128 x 2 bytes x 2.
M2 = Footprint((2_100_000_000,) * 62, 1_230_000_000, 1_230_000_000, 2 * 8 * 128 * 2)


def hosts(*sizes_gb: float, speeds: tuple[float, ...] | None = None) -> list[Host]:
    speeds = speeds or (1.0,) * len(sizes_gb)
    pairs = zip(sizes_gb, speeds, strict=True)
    return [Host(f"mac{i}", int(size * GB), speed) for i, (size, speed) in enumerate(pairs)]


@pytest.mark.parametrize(
    ("memory_gb", "speeds", "kv_tokens", "split"),
    [
        ((192, 192), None, 131072, "31,31"),  # even when memory allows
        ((128, 128, 128), None, 65536, "21,21,20"),  # the lowest ranks take the remainder
        # 72 GB usable holds 29 layers of 2.1 GB + 268 MB of KV each, and the embedding.
        ((256, 96), None, 65536, "33,29"),  # rank 1 cannot hold its even share
        ((96, 256), None, 65536, "29,33"),  # nor rank 0 (with the head instead)
        ((512, 512), (1, 2), 65536, "21,41"),  # a Mac twice as fast gets twice the layers
        ((512, 512, 512), (1, 1, 2), 0, "16,15,31"),
    ],
)
def test_splits(memory_gb, speeds, kv_tokens, split):
    plan = plan_split(M2, hosts(*memory_gb, speeds=speeds), kv_tokens)
    assert plan.split == split
    assert PipelineSplit.resolve(plan.split, len(memory_gb), 62).num_layers == 62
    for rank in plan.ranks:
        assert rank.needed_bytes <= rank.usable_bytes
        assert rank.usable_bytes == int(rank.host.memory_bytes * 0.75)


def test_the_head_and_embedding_count_where_they_live():
    plan = plan_split(M2, hosts(192, 192), 0)
    rank0, rank1 = plan.ranks
    assert rank0.layers == range(31, 62) and rank1.layers == range(0, 31)
    assert rank0.weights_bytes == 31 * 2_100_000_000 + M2.head_bytes
    assert rank1.weights_bytes == 31 * 2_100_000_000 + M2.embedding_bytes


def test_kv_room_and_the_budget_that_gives_it():
    plan = plan_split(M2, hosts(192, 192), 100_000)
    assert [rank.kv_bytes for rank in plan.ranks] == [31 * 100_000 * 4096] * 2
    assert plan.kv_budget_bytes == 31 * 100_000 * 4096


def test_headroom_is_a_fraction_of_each_host():
    # 31 layers and the head or embedding: 66.3 GB; 80 GB holds it whole, not at 75%.
    assert plan_split(M2, hosts(80, 80), 0, headroom=0.0).split == "31,31"
    with pytest.raises(PlanError, match="may use 60.0 GB of its 80.0 GB"):
        plan_split(M2, hosts(80, 80), 0, headroom=0.25)


def test_a_model_that_cannot_fit_is_refused_with_the_amount_missing():
    # 2 x 96 GB at 75%: 144 GB usable for ~136 GB of weights and 62 x 131072 x 4 KB of KV.
    with pytest.raises(PlanError) as error:
        plan_split(M2, hosts(96, 96), 131072)
    message = str(error.value)
    assert "does not fit" in message and "short" in message
    # The best split leaves its worst rank short by what the numbers say.
    need0 = 31 * (2_100_000_000 + 131072 * 4096) + M2.head_bytes
    assert f"{(need0 - 72 * GB) / GB:.1f} GB short" in message


def test_too_many_hosts_and_bad_headroom():
    tiny = Footprint((10, 10), 5, 5, 4)
    with pytest.raises(PlanError, match="3 hosts but the model has 2 layers"):
        plan_split(tiny, hosts(1, 1, 1), 0)
    with pytest.raises(PlanError, match="--headroom"):
        plan_split(tiny, hosts(1, 1), 0, headroom=1.0)


def write_header_only_model(directory, config: dict, tensors: dict[str, tuple[str, list[int]]]):
    """config.json, an index and a safetensors file whose header describes `tensors`
    (dtype, shape) with no data behind it: the planner reads headers only."""
    sizes = {"F32": 4, "BF16": 2, "U32": 4}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + count * sizes[dtype]],
        }
        offset += count * sizes[dtype]
    blob = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    weight_map = {name: "model.safetensors" for name in tensors}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(config))


def preset_tensors(config: dict) -> dict[str, tuple[str, list[int]]]:
    """Every tensor's name and shape as mlx_lm's MiniMax model holds them (lazily built:
    nothing is computed or allocated)."""
    from mlx.utils import tree_flatten
    from mlx_lm.models.minimax import Model, ModelArgs

    model = Model(ModelArgs.from_dict(config))
    return {name: ("F32", list(a.shape)) for name, a in tree_flatten(model.parameters())}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_footprint_of_the_presets_from_headers(tmp_path, preset):
    shape = PRESETS[preset]
    config = shape.config()
    write_header_only_model(tmp_path, config, preset_tensors(config))
    footprint = read_footprint(str(tmp_path))
    assert footprint.num_layers == shape.layers
    assert footprint.total_bytes == 4 * shape.num_parameters
    assert len(set(footprint.layer_bytes)) == 1
    assert footprint.embedding_bytes == 4 * shape.vocab * shape.hidden
    assert footprint.kv_bytes_per_token == 2 * shape.kv_heads * shape.head_dim * 4
    plan = plan_split(footprint, hosts(1, 1), 1024)
    assert plan.split == PipelineSplit.resolve(None, 2, shape.layers).__str__()


def test_a_made_up_larger_config_from_headers(tmp_path):
    """A 62-layer bf16 config whose tensors would take ~9 GB: only its header exists."""
    layers, hidden, vocab = 62, 1024, 32000
    config = {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "vocab_size": vocab,
    }
    tensors = {"model.embed_tokens.weight": ("BF16", [vocab, hidden])}
    for i in range(layers):
        tensors[f"model.layers.{i}.input_layernorm.weight"] = ("BF16", [hidden])
        tensors[f"model.layers.{i}.block_sparse_moe.switch_mlp.up_proj.weight"] = (
            "BF16",
            [32, 2048, hidden],
        )
    tensors["model.norm.weight"] = ("BF16", [hidden])
    tensors["lm_head.weight"] = ("BF16", [vocab, hidden])
    tensors["model.layers.62.mtp.weight"] = ("BF16", [hidden])  # beyond num_hidden_layers
    write_header_only_model(tmp_path, config, tensors)
    footprint = read_footprint(str(tmp_path))
    per_layer = 2 * (hidden + 32 * 2048 * hidden)
    assert footprint.layer_bytes == (per_layer,) * layers
    assert footprint.head_bytes == 2 * (hidden + vocab * hidden)
    assert footprint.kv_bytes_per_token == 2 * 2 * 128 * 2
    # 3 GB usable on rank 1: the embedding and 21 layers of 134 MB.
    assert plan_split(footprint, hosts(16, 4), 0).split == "41,21"


def test_weights_planned_per_rank_equal_what_the_stages_load(tiny_model):
    from refserver.pipeline import load_stage

    plan = plan_split(read_footprint(str(tiny_model)), hosts(0.004, 0.001), 512)
    split = PipelineSplit.resolve(plan.split, 2, 4)
    assert plan.split == "3,1"
    for rank in plan.ranks:
        stage, _ = load_stage(tiny_model, rank.rank, split)
        assert stage.parameter_bytes() == rank.weights_bytes
        assert stage.kv_bytes_per_token * 512 == rank.kv_bytes


def test_command_prints_the_split_and_the_launch_command(tiny_model, tmp_path, capsys):
    hostfile = tmp_path / "hosts.json"
    entries = [
        {"ssh": "localhost", "ips": ["10.0.0.1"], "memory": "4MB"},
        {"ssh": "me@mac2", "ips": ["10.0.0.2"], "memory": "1MB"},
    ]
    hostfile.write_text(json.dumps(entries))
    args = [
        "--model",
        str(tiny_model),
        "--hostfile",
        str(hostfile),
        "--context",
        "256",
        "--concurrency",
        "2",
    ]
    assert plan_command.main(args) == 0
    out = capsys.readouterr().out
    assert "MINIMAX_PIPELINE_SPLIT=3,1\n" in out
    assert "rank 0 (localhost, 4.0 MB): layers 1-3 + norm/head" in out
    assert "rank 1 (me@mac2, 1.0 MB): layers 0-0 + embedding" in out
    assert (
        f"mlx.launch --backend ring --hostfile {hostfile} --env MINIMAX_PIPELINE_SPLIT=3,1" in out
    )
    assert f"python -m refserver --model {tiny_model} --kv-budget 1MB" in out


def test_command_exit_codes(tiny_model, capsys):
    model = ["--model", str(tiny_model)]
    assert plan_command.main([*model, "--memory", "1MB,1MB"]) == 1
    assert "does not fit" in capsys.readouterr().err
    assert plan_command.main([*model, "--memory", "lots,1MB"]) == 2
    assert "such as 192GB, got 'lots'" in capsys.readouterr().err
    assert plan_command.main([*model]) == 2
    assert plan_command.main([*model, "--memory", "4MB,4MB", "--speed", "1"]) == 2
    assert plan_command.main(["--model", "/no/such/model", "--memory", "4MB"]) == 2
