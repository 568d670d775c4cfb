"""A small byte-level BPE tokenizer with MiniMax-M2's control tokens and chat template.

Trained offline on `tiny_corpus.txt`; the `tokenizers` BPE trainer is deterministic for a
fixed corpus, so the same vocabulary size always gives the same `tokenizer.json`.
"""

import json
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

BOS = "]~!b["
TURN = "]~b]"
EOS = "[e~["
CONTROL_TOKENS = (BOS, TURN, EOS)
MARKERS = ("<think>", "</think>", "<minimax:tool_call>", "</minimax:tool_call>")

# MiniMax-M2's template, reduced to what we need. Jinja has no JSON parser, so
# `json_args` walks a JSON-string `arguments` object character by character;
# nested values stay raw JSON, as `tojson` renders them for dict arguments.
CHAT_TEMPLATE = r"""
{%- macro text(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content is iterable and content is not mapping -%}
{%- for part in content -%}
{%- if part is string -%}{{ part }}{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}
{%- endfor -%}
{%- elif content is not none -%}{{ content }}
{%- endif -%}
{%- endmacro -%}
{%- macro param(name, value) -%}
{{- '<parameter name="' ~ name ~ '">' ~ value ~ '</parameter>\n' -}}
{%- endmacro -%}
{%- macro json_args(s) -%}
{%- set ns = namespace(state='start', key='', buf='', depth=0, esc=false, quoted=false,
    hex='', hex_left=0, high=0) -%}
{%- for c in s -%}
{%- if ns.state in ('key', 'str') -%}
{%- if ns.hex_left > 0 -%}
{%- set ns.hex = ns.hex ~ c -%}{%- set ns.hex_left = ns.hex_left - 1 -%}
{%- if ns.hex_left == 0 -%}
{%- set code = ns.hex | int(base=16) -%}
{%- if 55296 <= code < 56320 -%}{%- set ns.high = code -%}
{%- elif 56320 <= code < 57344 and ns.high -%}
{%- set ns.buf = ns.buf ~ '%c' | format(65536 + (ns.high - 55296) * 1024 + code - 56320) -%}
{%- set ns.high = 0 -%}
{%- else -%}{%- set ns.buf = ns.buf ~ '%c' | format(code) -%}
{%- endif -%}
{%- endif -%}
{%- elif ns.esc -%}
{%- set ns.esc = false -%}
{%- if c == 'u' -%}{%- set ns.hex = '' -%}{%- set ns.hex_left = 4 -%}
{%- else -%}
{%- set ns.buf = ns.buf ~ {'n': '\n', 't': '\t', 'r': '\r', 'b': '\b', 'f': '\f'}.get(c, c) -%}
{%- endif -%}
{%- elif c == '\\' -%}{%- set ns.esc = true -%}
{%- elif c == '"' and ns.state == 'key' -%}{%- set ns.key = ns.buf -%}{%- set ns.state = 'colon' -%}
{%- elif c == '"' -%}{{- param(ns.key, ns.buf) -}}{%- set ns.state = 'next' -%}
{%- else -%}{%- set ns.buf = ns.buf ~ c -%}
{%- endif -%}
{%- elif ns.state == 'raw' and ns.quoted -%}
{%- set ns.buf = ns.buf ~ c -%}
{%- if ns.esc -%}{%- set ns.esc = false -%}
{%- elif c == '\\' -%}{%- set ns.esc = true -%}
{%- elif c == '"' -%}{%- set ns.quoted = false -%}
{%- endif -%}
{%- elif ns.state == 'raw' -%}
{%- if ns.depth == 0 and c in ',}' -%}
{{- param(ns.key, ns.buf | trim) -}}{%- set ns.state = 'next' if c == ',' else 'done' -%}
{%- else -%}
{%- set ns.buf = ns.buf ~ c -%}
{%- if c == '"' -%}{%- set ns.quoted = true -%}
{%- elif c in '{[' -%}{%- set ns.depth = ns.depth + 1 -%}
{%- elif c in '}]' -%}{%- set ns.depth = ns.depth - 1 -%}
{%- endif -%}
{%- endif -%}
{%- elif ns.state == 'start' and c == '{' -%}{%- set ns.state = 'next' -%}
{%- elif ns.state == 'next' and c == '"' -%}{%- set ns.buf = '' -%}{%- set ns.state = 'key' -%}
{%- elif ns.state == 'next' and c == '}' -%}{%- set ns.state = 'done' -%}
{%- elif ns.state == 'colon' and c == ':' -%}{%- set ns.state = 'value' -%}
{%- elif ns.state == 'value' and c == '"' -%}{%- set ns.buf = '' -%}{%- set ns.state = 'str' -%}
{%- elif ns.state == 'value' and c.strip() -%}
{%- set ns.buf = c -%}{%- set ns.depth = 1 if c in '{[' else 0 -%}{%- set ns.state = 'raw' -%}
{%- endif -%}
{%- endfor -%}
{%- endmacro -%}
{%- set turn = ']~b]' -%}
{%- set eot = '[e~[' -%}
{%- if messages and messages[0].role == 'system' -%}
{%- set system = text(messages[0].content) -%}
{%- set conversation = messages[1:] -%}
{%- else -%}
{%- set system = 'You are a helpful assistant.' -%}
{%- set conversation = messages -%}
{%- endif -%}
{%- set last = namespace(user=-1) -%}
{%- for m in conversation -%}
{%- if m.role == 'user' -%}{%- set last.user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{{- ']~!b[' ~ turn ~ 'system\n' ~ system -}}
{%- if tools -%}
{{- '\n\n# Tools\nYou may call one or more tools to assist with the user query.\n' -}}
{{- 'Here are the tools available in JSONSchema format:\n\n<tools>\n' -}}
{%- for tool in tools -%}
{{- '<tool>' ~ (tool.function if tool.function is defined else tool) | tojson ~ '</tool>\n' -}}
{%- endfor -%}
{{- '</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass parameters:\n' -}}
{{- '\n<minimax:tool_call>\n<invoke name="tool-name-1">\n' -}}
{{- '<parameter name="param-key-1">param-value-1</parameter>\n</invoke>\n</minimax:tool_call>' -}}
{%- endif -%}
{{- eot ~ '\n' -}}
{%- for message in conversation -%}
{%- if message.role in ('user', 'system') -%}
{{- turn ~ message.role ~ '\n' ~ text(message.content) ~ eot ~ '\n' -}}
{%- elif message.role == 'assistant' -%}
{{- turn ~ 'ai\n' -}}
{%- set content = text(message.content) -%}
{%- set reasoning = message.reasoning_content if message.reasoning_content is string else '' -%}
{%- if '</think>' in content -%}
{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\n') -%}
{%- set content = content.split('</think>')[-1].strip('\n') -%}
{%- endif -%}
{%- if reasoning and loop.index0 > last.user -%}
{{- '<think>\n' ~ reasoning ~ '\n</think>\n\n' -}}
{%- endif -%}
{{- content -}}
{%- if message.tool_calls -%}
{{- '\n<minimax:tool_call>\n' -}}
{%- for call in message.tool_calls -%}
{%- set fn = call.function if call.function is defined else call -%}
{{- '<invoke name="' ~ fn.name ~ '">\n' -}}
{%- if fn.arguments is string -%}{{- json_args(fn.arguments) -}}
{%- else -%}
{%- for k, v in (fn.arguments or {}).items() -%}
{{- param(k, v if v is string else v | tojson) -}}
{%- endfor -%}
{%- endif -%}
{{- '</invoke>\n' -}}
{%- endfor -%}
{{- '</minimax:tool_call>' -}}
{%- endif -%}
{{- eot ~ '\n' -}}
{%- elif message.role == 'tool' -%}
{%- if loop.first or conversation[loop.index0 - 1].role != 'tool' -%}
{{- turn ~ 'tool' -}}
{%- endif -%}
{{- '\n<response>' ~ text(message.content) ~ '</response>' -}}
{%- if loop.last or conversation[loop.index0 + 1].role != 'tool' -%}
{{- eot ~ '\n' -}}
{%- endif -%}
{%- else -%}
{{- raise_exception('Unknown message role: ' ~ message.role) -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- turn ~ 'ai\n' -}}
{%- if enable_thinking is not defined or enable_thinking -%}{{- '<think>\n' -}}{%- endif -%}
{%- endif -%}
"""


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE of exactly `vocab_size` tokens, control tokens and markers included."""
    corpus = resources.files("simcluster").joinpath("tiny_corpus.txt").read_text("utf-8")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(MARKERS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(CONTROL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator([corpus], trainer=trainer)
    # The markers stay visible when decoding (not special), like MiniMax-M2's, but never split.
    tokenizer.add_tokens([AddedToken(m, special=False, normalized=False) for m in MARKERS])
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the built-in corpus yields {tokenizer.get_vocab_size()} tokens, "
            f"not the {vocab_size} asked for: choose a smaller vocabulary"
        )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    """Write `tokenizer.json` and a `tokenizer_config.json` that AutoTokenizer and mlx_lm load."""
    (out_dir / "tokenizer.json").write_text(tokenizer.to_str(pretty=True), "utf-8")
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": BOS,
        "chat_template": CHAT_TEMPLATE.strip(),
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (out_dir / "tokenizer_config.json").write_text(text, "utf-8")
