"""Split a model's output into reasoning, content and tool calls, as it streams.

``OutputParser`` is fed decoded text deltas and returns events:

- ``ReasoningDelta``: text inside ``<think>...</think>``, or from the start when the prompt
  itself ended with ``<think>`` (``starts_in_reasoning=True``). If ``</think>`` never comes,
  everything to the end is reasoning. Inside reasoning only ``</think>`` is a marker;
  a ``</think>`` outside reasoning is plain content.
- ``ContentDelta``: other text. It streams at once, except for a tail that could still
  be the start of a marker (``<think>``, ``</think>``, ``<minimax:tool_call>``).
- ``ToolCallEvent``: one complete call, with its index counting from 0 over the response.

Each of the reasoning and content texts is trimmed of leading and trailing whitespace
(the format puts newlines around the markers): whitespace is held back until more text
follows in the same channel and dropped at the end, so no lone newline is streamed after
a tool call. Inner whitespace is kept verbatim.

A tool-call block ends at its real closing tag, not at one inside a parameter value
(see ``BlockScanner``). A block still open at ``finish()`` whose text ends with
``</minimax:tool_call>`` (a call missing some closing tags) is read as closed there.
Any other block still open (cut by max_tokens or a stop string) is not lost: its raw
text, ``<minimax:tool_call>`` included, is emitted as content, and ``tool_call_incomplete``
turns True so that the caller reports why generation ended, not "tool_calls". A closed
block with no ``<invoke>`` in it is emitted as content too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from refserver.tools.minimax import (
    TOOL_CALL_END,
    TOOL_CALL_START,
    BlockScanner,
    ToolCall,
    parse_tool_block,
    tool_calls,
)

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass(frozen=True)
class ContentDelta:
    """Answer text for ``content``."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """Thinking text for ``reasoning_content``."""

    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    """One complete call; ``index`` counts from 0 across the whole response."""

    index: int
    call: ToolCall


OutputEvent = ContentDelta | ReasoningDelta | ToolCallEvent


class _State(Enum):
    CONTENT = "content"
    REASONING = "reasoning"
    TOOL_CALL = "tool_call"


def prompt_opens_reasoning(prompt: str) -> bool:
    """True when the rendered prompt ends inside ``<think>`` (the template opened it)."""
    return prompt.rstrip().endswith(THINK_START)


def _partial_marker_length(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the start of a marker."""
    for n in range(min(max(map(len, markers)) - 1, len(text)), 0, -1):
        if any(marker.startswith(text[-n:]) for marker in markers):
            return n
    return 0


class _Channel:
    """One output channel (content or reasoning), trimmed at both ends as it streams."""

    def __init__(self, kind: type[ContentDelta] | type[ReasoningDelta], started: bool = False):
        self._kind = kind
        self._started = started
        self._pending_space = ""

    def push(self, text: str, events: list[OutputEvent]) -> None:
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        text = self._pending_space + text
        visible = text.rstrip()
        self._pending_space = text[len(visible) :]
        if visible:
            events.append(self._kind(visible))


class OutputParser:
    """Streaming parser of one response: ``feed(delta)`` as text arrives, then ``finish()``.

    tools: the request's OpenAI ``tools`` list, used to type arguments.
    parse_tool_calls: False leaves ``<minimax:tool_call>`` blocks in the content (tool
    choice "none", or no tools offered).
    starts_in_reasoning: the prompt ended with ``<think>``, see ``prompt_opens_reasoning``.
    continues_text: the prompt ended inside assistant text (a prefill), so the output's
    leading whitespace belongs to that text and is kept.
    """

    def __init__(
        self,
        tools: list[dict] | None = None,
        *,
        parse_tool_calls: bool = True,
        starts_in_reasoning: bool = False,
        continues_text: bool = False,
    ):
        self._tools = tools
        self._parse_tool_calls = parse_tool_calls
        self._state = _State.REASONING if starts_in_reasoning else _State.CONTENT
        self._buffer = ""  # Unhandled text: a delta, or a tail that may begin a marker.
        self._block: list[str] = []  # The raw text of the tool-call block read so far.
        self._scanner = BlockScanner()
        self._content = _Channel(ContentDelta, started=continues_text)
        self._reasoning = _Channel(ReasoningDelta)
        self.tool_calls: list[ToolCall] = []
        self.tool_call_incomplete = False

    def feed(self, delta: str) -> list[OutputEvent]:
        """Consume a text delta; return the events it completes."""
        self._buffer += delta
        events: list[OutputEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[OutputEvent]:
        """End of output: flush held-back text and return the last events."""
        events: list[OutputEvent] = []
        if self._state is _State.TOOL_CALL:
            self._finish_tool_block(events)
        else:
            self._channel().push(self._buffer, events)
        self._buffer = ""
        return events

    def _markers(self) -> tuple[str, ...]:
        if self._state is _State.REASONING:
            return (THINK_END,)
        return (THINK_START, TOOL_CALL_START) if self._parse_tool_calls else (THINK_START,)

    def _channel(self) -> _Channel:
        return self._reasoning if self._state is _State.REASONING else self._content

    def _step(self, events: list[OutputEvent]) -> bool:
        """Handle the first marker in the buffer; return False when none is complete."""
        if self._state is _State.TOOL_CALL:
            return self._read_tool_block(events)
        found = [(i, m) for m in self._markers() if (i := self._buffer.find(m)) >= 0]
        if not found:
            self._hold_back_partial_marker(events)
            return False
        index, marker = min(found)
        before, self._buffer = self._buffer[:index], self._buffer[index + len(marker) :]
        self._channel().push(before, events)
        self._state = {
            THINK_START: _State.REASONING,
            THINK_END: _State.CONTENT,
            TOOL_CALL_START: _State.TOOL_CALL,
        }[marker]
        return True

    def _hold_back_partial_marker(self, events: list[OutputEvent]) -> None:
        """Pass on all but a tail that may begin a marker."""
        split = len(self._buffer) - _partial_marker_length(self._buffer, self._markers())
        self._channel().push(self._buffer[:split], events)
        self._buffer = self._buffer[split:]

    def _read_tool_block(self, events: list[OutputEvent]) -> bool:
        """Give the buffer to the block's scanner; True once the block has ended."""
        text, self._buffer = self._buffer, ""
        self._block.append(text)
        after = self._scanner.feed(text)
        if after is None:
            return False
        self._buffer = after
        raw = "".join(self._block)
        block = raw[: len(raw) - len(after) - len(TOOL_CALL_END)]
        self._end_tool_block(block, tool_calls(self._scanner.invokes, self._tools), events)
        return True

    def _finish_tool_block(self, events: list[OutputEvent]) -> None:
        """The output ended inside a block: closed after all if it ends with the closing
        tag, else cut off and kept as raw content."""
        raw = "".join(self._block)
        block = raw.rstrip()
        if block.endswith(TOOL_CALL_END):
            block = block.removesuffix(TOOL_CALL_END)
            self._end_tool_block(block, parse_tool_block(block, self._tools), events)
        else:
            self.tool_call_incomplete = True
            self._content.push(TOOL_CALL_START + raw, events)

    def _end_tool_block(self, block: str, calls: list[ToolCall], events: list[OutputEvent]) -> None:
        self._block = []
        self._scanner = BlockScanner()
        if not calls:
            self._content.push(TOOL_CALL_START + block + TOOL_CALL_END, events)
        for call in calls:
            events.append(ToolCallEvent(len(self.tool_calls), call))
            self.tool_calls.append(call)
        self._state = _State.CONTENT


@dataclass
class ParsedOutput:
    """A whole response, split: what a non-streaming reply needs."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_incomplete: bool = False


def parse_output(
    text: str,
    tools: list[dict] | None = None,
    *,
    parse_tool_calls: bool = True,
    starts_in_reasoning: bool = False,
) -> ParsedOutput:
    """Split a complete response; the same rules as streaming it through ``OutputParser``."""
    parser = OutputParser(
        tools, parse_tool_calls=parse_tool_calls, starts_in_reasoning=starts_in_reasoning
    )
    result = ParsedOutput()
    for event in parser.feed(text) + parser.finish():
        if isinstance(event, ContentDelta):
            result.content += event.text
        elif isinstance(event, ReasoningDelta):
            result.reasoning += event.text
    result.tool_calls = parser.tool_calls
    result.tool_call_incomplete = parser.tool_call_incomplete
    return result
