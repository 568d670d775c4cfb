"""One generation's timeline, from the HTTP server or from in-process mlx_lm, and its rates.

Both sides of every comparison fill the same `Stream`, so one set of functions computes
the figures for refserver, its peers and the in-process baseline alike.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Stream:
    """When a generation was asked for, when each piece of its output (and its end) arrived,
    and its usage."""

    started: float
    arrivals: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None

    @property
    def time_to_first_token(self) -> float:
        return self.arrivals[0] - self.started

    @property
    def prefill_rate(self) -> float:
        """Prompt tokens computed (not read from a cache) per second until the first token."""
        return (self.prompt_tokens - self.cached_tokens) / self.time_to_first_token

    @property
    def decode_rate(self) -> float:
        """Tokens after the first over the time since the first arrived (as mlx_lm counts).

        A server holds back text that may still become a tag or a UTF-8 character, so a
        random model's pieces of output carry up to a few tokens each: ask for enough.
        """
        if len(self.arrivals) < 2:
            raise ValueError("the output arrived in one piece: ask for more tokens (--tokens)")
        return (self.completion_tokens - 1) / (self.arrivals[-1] - self.arrivals[0])

    def gaps(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        """Time between consecutive arrivals whose later one falls in [start, end]."""
        pairs = zip(self.arrivals, self.arrivals[1:], strict=False)
        return [later - earlier for earlier, later in pairs if start <= later <= end]


def aggregate_rate(streams: list[Stream]) -> float:
    """Completion tokens of all streams over the time from the first request to the last token.

    Prompt processing counts as part of the time, as a user waits for it: the server may
    batch the prompts or take them one after another, and either way this is what the
    batch delivers.
    """
    started = min(stream.started for stream in streams)
    ended = max(stream.arrivals[-1] for stream in streams)
    return sum(stream.completion_tokens for stream in streams) / (ended - started)


def chat_stream(
    base_url: str, body: dict, hang_up: threading.Event | None = None, into: Stream | None = None
) -> Stream:
    """POST a streaming chat completion to `base_url` (…/v1) and time its output.

    `hang_up` set: the client hangs up after the next event, as a user who cancels.
    `into`: the Stream to fill, for a reader in another thread to watch it grow.
    """
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    payload = json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}})
    stream = into or Stream(started=0.0)
    stream.started = time.perf_counter()
    try:
        connection.request(
            "POST", f"{url.path}/chat/completions", payload, {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{base_url}: {response.status} {response.read()[:500]!r}")
        for raw in response:
            _read_event(raw, stream)
            if hang_up is not None and hang_up.is_set():
                break
    finally:
        connection.close()
    return stream


def _read_event(raw: bytes, stream: Stream) -> None:
    line = raw.decode().strip()
    if not line.startswith("data: ") or line == "data: [DONE]":
        return
    chunk = json.loads(line[len("data: ") :])
    if chunk.get("error"):
        raise RuntimeError(f"the server sent an error event: {chunk['error']}")
    if chunk.get("usage"):
        _read_usage(chunk["usage"], stream)
    for choice in chunk.get("choices") or []:
        text = _output_text(choice.get("delta") or {})
        # The end counts as an arrival: a lone first token may be all whitespace, which
        # the server trims, and then the end is when that token was out.
        if text or choice.get("finish_reason"):
            stream.arrivals.append(time.perf_counter())
            stream.text += text
            stream.finish_reason = choice.get("finish_reason") or stream.finish_reason


def _read_usage(usage: dict, stream: Stream) -> None:
    stream.prompt_tokens = usage["prompt_tokens"]
    stream.completion_tokens = usage["completion_tokens"]
    stream.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0


def _output_text(delta: dict) -> str:
    # MiniMax's template opens <think>, so a random model's text arrives as reasoning:
    # refserver calls it reasoning_content, mlx_lm.server reasoning.
    parts = (delta.get(key) for key in ("content", "reasoning_content", "reasoning"))
    return "".join(part for part in parts if part)


class BackgroundStream:
    """A chat stream read in a thread of its own; `stream` grows while it runs."""

    def __init__(self, base_url: str, body: dict):
        self.stream = Stream(started=time.perf_counter())
        self._hang_up = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, args=(base_url, body), daemon=True)
        self._thread.start()

    def _read(self, base_url: str, body: dict) -> None:
        try:
            chat_stream(base_url, body, self._hang_up, self.stream)
        except BaseException as exc:  # raised again in the caller's thread by join()
            self._error = exc

    def wait_for(self, arrivals: int, timeout: float = 600.0) -> None:
        """Block until the stream has `arrivals` pieces of output; raise if it ends first."""
        deadline = time.monotonic() + timeout
        while len(self.stream.arrivals) < arrivals:
            if not self._thread.is_alive():
                self.join()
                raise RuntimeError(
                    f"the stream ended ({self.stream.finish_reason}) after "
                    f"{len(self.stream.arrivals)} of {arrivals} pieces of output, "
                    f"{self.stream.completion_tokens} tokens: {self.stream.text[-200:]!r}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {arrivals} pieces of output within {timeout:g} s")
            time.sleep(0.005)

    def join(self, hang_up: bool = False) -> Stream:
        """The finished stream (`hang_up`: cut it short first)."""
        if hang_up:
            self._hang_up.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.stream


def concurrent_streams(base_url: str, bodies: list[dict]) -> list[Stream]:
    """Send every body at once, each on its own connection; their streams in order."""
    running = [BackgroundStream(base_url, body) for body in bodies]
    return [background.join() for background in running]
