"""Helpers for tests on real ranks: logs, process facts, raw HTTP and the reference answer."""

from __future__ import annotations

import functools
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import openai

# The request that proves the ranks are in step: its greedy text completion must equal
# single-process mlx_lm's, token for token. (A text completion: no chat template and
# no reasoning split, just the tokens.)
PROMPT = "Once upon a time"
MAX_TOKENS = 24


class Logs:
    """A ServerCluster sink that keeps every line, for assertions on what ranks logged."""

    def __init__(self):
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def text(self, rank: int | None = None) -> str:
        with self._lock:
            lines = list(self.lines)
        if rank is not None:
            lines = [line for line in lines if line.startswith(f"[rank {rank}]")]
        return "\n".join(lines)

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.text():
                return True
            time.sleep(0.05)
        return False


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise KeyError(name)


def rss_mb(pid: int) -> float:
    """Resident memory of a process (VmRSS), in MB."""
    return int(_status_field(pid, "VmRSS").split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks


def rank_pids(cluster) -> list[int]:
    return [process.pid for process in cluster.ranks.processes]


@functools.cache
def reference_text(model: Path, prompt: str = PROMPT, max_tokens: int = MAX_TOKENS) -> str:
    """Single-process mlx_lm's greedy text, up to the first end-of-sequence token."""
    from transformers import AutoTokenizer

    from simcluster.parity import reference_tokens

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    prompt_tokens = tokenizer.encode(prompt, add_special_tokens=False)
    tokens = reference_tokens(model, prompt_tokens, max_tokens)
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


def client(cluster, api_key: str = "unused", timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.base_url, api_key=api_key, max_retries=0, timeout=timeout)


def complete(cluster, prompt: str = PROMPT, max_tokens: int = MAX_TOKENS, **kwargs) -> str:
    """A greedy text completion through the openai SDK; its text."""
    api_key = kwargs.pop("api_key", "unused")
    reply = client(cluster, api_key).completions.create(
        model="default_model", prompt=prompt, max_tokens=max_tokens, temperature=0, **kwargs
    )
    return reply.choices[0].text


def assert_in_step(cluster, model: Path, **kwargs) -> None:
    """The ranks still agree: the next greedy request gives the reference answer."""
    assert cluster.health()[0] == 200, cluster.health()
    assert complete(cluster, **kwargs) == reference_text(model)


def chat_body(prompt: str = "What is the capital of France?", **fields) -> dict:
    return {
        "model": "default_model",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        **fields,
    }


def long_body(max_tokens: int = 3000, **fields) -> dict:
    """A request that runs to max_tokens: tiny models' end-of-sequence token (2) is banned."""
    return chat_body(max_tokens=max_tokens, logit_bias={"2": -100}, **fields)


def post(
    cluster,
    body: dict | bytes,
    path: str = "/v1/chat/completions",
    headers: dict | None = None,
    timeout: float = 60,
) -> tuple[int, http.client.HTTPMessage, dict]:
    """POST a JSON (or raw) body; (status, headers, parsed JSON body or {})."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = http.client.HTTPConnection(cluster.host, cluster.port, timeout=timeout)
    try:
        try:
            connection.request(
                "POST", path, data, {"Content-Type": "application/json", **(headers or {})}
            )
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before the whole body was sent (a 413): read it
        response = connection.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"raw": raw.decode(errors="replace")}
        return response.status, response.headers, parsed
    finally:
        connection.close()


def open_stream(
    cluster, body: dict, events: int, timeout: float = 60
) -> tuple[socket.socket, bytes]:
    """Start a streaming request over a raw socket; read its headers and `events` SSE events.

    The caller closes the socket (a client that drops the stream).
    """
    payload = json.dumps({**body, "stream": True}).encode()
    sock = socket.create_connection((cluster.host, cluster.port), timeout=timeout)
    # HTTP/1.0: the events arrive unchunked, in one close-delimited body.
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    received = b""
    while b"\r\n\r\n" not in received or received.count(b"data: ") < events:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return sock, received


def sse_events(raw: bytes) -> list[dict | str]:
    """The data of each SSE event in a raw HTTP response (JSON, or "[DONE]")."""
    events: list[dict | str] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            data = line[len(b"data: ") :].strip().decode()
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
