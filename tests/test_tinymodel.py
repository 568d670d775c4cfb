"""Tiny MiniMax-shaped models: they load, are deterministic, and give diverse greedy output."""

import json

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.generate import generate_step
from safetensors import safe_open

from simcluster.tinymodel import PRESETS, TinyModelError, build_tiny_model, preset_shape
from simcluster.tokenizer import CONTROL_TOKENS, MARKERS

VARIANTS = {
    "tiny": {},
    "tiny-q4": {"quantize_bits": 4},
    "medium": {"preset": "medium"},
}
FAST = ["tiny", "tiny-q4"]
# Several seeds: with a weaker init (q/k norm weight 1) about one seed in six collapses.
DIVERSE = [(name, seed) for name in FAST for seed in range(6)]
DIVERSE.append(pytest.param("medium", 0, marks=pytest.mark.slow))
PROMPTS = ["Hello, how are you?", "Write a Python function."]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build each variant once per module, on first use."""
    dirs = {}

    def get(name, seed=0):
        if (name, seed) not in dirs:
            out = tmp_path_factory.mktemp(f"{name}-{seed}")
            dirs[name, seed] = build_tiny_model(out, seed=seed, **VARIANTS[name])
        return dirs[name, seed]

    return get


@pytest.fixture(scope="module")
def tokenizer(built):
    return load(str(built("tiny")))[1]


def greedy(model, tokenizer, prompt, n=64):
    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    steps = generate_step(mx.array(ids), model, sampler=lambda logits: mx.argmax(logits, -1))
    return [int(token) for (token, _), _ in zip(steps, range(n), strict=False)]


def shortest_period(tokens):
    """The shortest period of `tokens`, or None when it has none shorter than half its length."""
    return next(
        (p for p in range(1, len(tokens) // 2) if tokens[p:] == tokens[:-p]),
        None,
    )


@pytest.mark.parametrize("name", FAST)
def test_loads_with_mlx_lm(built, name):
    path = built(name)
    model, tokenizer, config = load(str(path), return_config=True)
    assert config["model_type"] == "minimax"
    assert config["vocab_size"] >= len(tokenizer)
    assert config["eos_token_id"] in tokenizer.eos_token_ids
    index = json.loads((path / "model.safetensors.index.json").read_text())
    with safe_open(path / "model.safetensors", "np") as f:
        stored = set(f.keys())
    assert set(index["weight_map"]) == stored
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    assert stored == {k for k, _ in tree_flatten(model.parameters())}


def test_float_weights_are_float32(built):
    model, _ = load(str(built("tiny")))
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.float32}


def test_quantized_config_records_the_8_bit_router(built):
    config = json.loads((built("tiny-q4") / "config.json").read_text())
    quantization = config["quantization"]
    assert (quantization["bits"], quantization["group_size"]) == (4, 64)
    assert quantization["model.layers.0.block_sparse_moe.gate"]["bits"] == 8


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"quantize_bits": 4}, {"seed": 7, "layers": 2, "hidden": 128, "experts": 8}],
)
def test_same_arguments_give_identical_files(tmp_path, kwargs):
    first = build_tiny_model(tmp_path / "a", **kwargs)
    second = build_tiny_model(tmp_path / "b", **kwargs)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert "tokenizer.json" in names and "model.safetensors" in names
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_seeds_give_different_weights(tmp_path):
    a = build_tiny_model(tmp_path / "a", seed=0) / "model.safetensors"
    b = build_tiny_model(tmp_path / "b", seed=1) / "model.safetensors"
    assert a.read_bytes() != b.read_bytes()


@pytest.mark.parametrize("preset, low, high", [("tiny", 300_000, 800_000), ("medium", 80e6, 130e6)])
def test_preset_parameter_counts(preset, low, high):
    assert low <= PRESETS[preset].num_parameters <= high


def test_parameter_count_matches_the_loaded_model(built):
    model, _ = load(str(built("tiny")))
    loaded = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert loaded == PRESETS["tiny"].num_parameters


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"layers": 2}, {"num_hidden_layers": 2, "hidden_size": 64}),
        ({"hidden": 128, "experts": 8}, {"hidden_size": 128, "num_local_experts": 8}),
    ],
)
def test_overrides_reach_the_config(tmp_path, overrides, expected):
    config = json.loads((build_tiny_model(tmp_path, **overrides) / "config.json").read_text())
    assert {k: config[k] for k in expected} == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "huge"}, "unknown preset"),
        ({"layers": 0}, "layers must be >= 1"),
        ({"experts": 1}, "experts must be >= experts_per_token"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"quantize_bits": 7}, "quantize_bits must be one of"),
        ({"hidden": 96, "quantize_bits": 4}, "hidden a multiple of 64"),
    ],
)
def test_bad_options_fail_with_a_message(tmp_path, kwargs, message):
    with pytest.raises(TinyModelError, match=message):
        build_tiny_model(tmp_path, **kwargs)


@pytest.mark.parametrize("name, seed", DIVERSE)
def test_greedy_output_is_diverse(built, name, seed):
    model, tokenizer = load(str(built(name, seed)))
    for prompt in PROMPTS:
        tokens = greedy(model, tokenizer, prompt)
        assert len(set(tokens)) >= 16, (prompt, tokens)
        assert shortest_period(tokens[-32:]) is None, (prompt, tokens)


@pytest.mark.parametrize("text", [*CONTROL_TOKENS, *MARKERS])
def test_special_text_is_one_token(tokenizer, text):
    assert len(tokenizer.encode(text, add_special_tokens=False)) == 1


def test_mlx_lm_selects_the_minimax_tool_parser_and_thinking(tokenizer):
    assert tokenizer.has_tool_calling
    assert tokenizer.tool_call_start == "<minimax:tool_call>"
    assert tokenizer.has_thinking and tokenizer.think_start == "<think>"


WEATHER = {"city": 'Zürich "old town"\n😀', "days": 3, "where": {"lat": [47.4, {"x": "},"}]}}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "where": {"type": "object"},
                },
            },
        },
    }
]


def tool_call_chat(arguments):
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": arguments},
    }
    return [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": "", "reasoning_content": "Ask.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "dry"}]},
        {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nSunny."},
    ]


def render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


@pytest.mark.parametrize(
    "messages, kwargs, expected",
    [
        (
            [{"role": "user", "content": "Hi"}],
            {"add_generation_prompt": True},
            "]~!b[]~b]system\nYou are a helpful assistant.[e~[\n"
            "]~b]user\nHi[e~[\n]~b]ai\n<think>\n",
        ),
        (
            [{"role": "user", "content": "Hi"}],
            {"add_generation_prompt": True, "enable_thinking": False},
            "]~!b[]~b]system\nYou are a helpful assistant.[e~[\n]~b]user\nHi[e~[\n]~b]ai\n",
        ),
        (
            tool_call_chat(WEATHER),
            {},
            "]~!b[]~b]system\nBe brief.[e~[\n]~b]user\nWeather?[e~[\n"
            "]~b]ai\n<think>\nAsk.\n</think>\n\n\n<minimax:tool_call>\n"
            '<invoke name="get_weather">\n'
            '<parameter name="city">Zürich "old town"\n😀</parameter>\n'
            '<parameter name="days">3</parameter>\n'
            '<parameter name="where">{"lat": [47.4, {"x": "},"}]}</parameter>\n'
            "</invoke>\n</minimax:tool_call>[e~[\n"
            "]~b]tool\n<response>sunny</response>\n<response>dry</response>[e~[\n"
            "]~b]ai\n<think>\nEasy.\n</think>\n\nSunny.[e~[\n",
        ),
    ],
)
def test_chat_template_renders(tokenizer, messages, kwargs, expected):
    assert render(tokenizer, messages, **kwargs) == expected


@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_json_string_arguments_render_like_a_dict(tokenizer, separators, ensure_ascii):
    as_string = json.dumps(WEATHER, separators=separators, ensure_ascii=ensure_ascii)
    expected = render(tokenizer, tool_call_chat(WEATHER))
    rendered = render(tokenizer, tool_call_chat(as_string))
    if separators == (",", ":"):
        expected = expected.replace('{"lat": [47.4, {"x": "},"}]}', '{"lat":[47.4,{"x":"},"}]}')
    assert rendered == expected


def test_rendered_tool_call_parses_back(tokenizer):
    text = render(tokenizer, tool_call_chat(WEATHER))
    start = text.index(tokenizer.tool_call_start) + len(tokenizer.tool_call_start)
    call = tokenizer.tool_parser(text[start : text.index(tokenizer.tool_call_end)], TOOLS)
    assert call == {"name": "get_weather", "arguments": WEATHER}


def test_tools_block_lists_the_schemas(tokenizer):
    text = render(tokenizer, [{"role": "user", "content": "Hi"}], tools=TOOLS)
    assert "<tools>\n<tool>" + json.dumps(TOOLS[0]["function"]) + "</tool>\n</tools>" in text
    assert text.index("</tools>") < text.index("]~b]user")


def test_preset_shape_applies_overrides():
    assert preset_shape("medium", layers=2).layers == 2
    assert preset_shape("medium", layers=2).hidden == 512
