"""The Vercel AI SDK (`ai` + `@ai-sdk/openai-compatible`, what OpenCode uses, and
`@ai-sdk/openai`'s Responses API model) against 2 real ranks with scripted output:
generateText and streamText, with and without tools, and an agent loop that runs a tool
and answers. Needs node and npm (Node 20+); the packages
pinned in tests/node/package-lock.json are installed with `npm ci` once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from forced import ForcedCluster

pytestmark = pytest.mark.slow

NODE_DIR = Path(__file__).parent / "node"
API_KEY = "sk-node-test"
CALL_SCRIPT = (
    "The user wants the notes.\n</think>\n\nReading them.\n<minimax:tool_call>\n"
    '<invoke name="read_file">\n<parameter name="path">/ home/ me/ notes. md</parameter>\n'
    '<parameter name="limit">5</parameter>\n</invoke>\n</minimax:tool_call>'
)
ANSWER_SCRIPT = "Short thought.</think>Hello from refserver."


@pytest.fixture(scope="session")
def node():
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("node and npm are not on PATH: the Vercel AI SDK tests need Node 20+")
    command = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    subprocess.run(command, cwd=NODE_DIR, check=True, timeout=600)
    return node


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("forced-node")
    with ForcedCluster(2, tiny_model, work, extra_args=("--api-key", API_KEY)) as forced:
        yield forced


def node_run(node, cluster, case: str, prompt: str, api_key: str = API_KEY, **env: str):
    """Run tests/node/run.mjs for one case; the finished process."""
    environment = {
        **os.environ,
        "REFSERVER_BASE_URL": cluster.base_url,
        "REFSERVER_API_KEY": api_key,
        "REFSERVER_PROMPT": prompt,
        **env,
    }
    command = [node, "run.mjs", case]
    return subprocess.run(
        command, cwd=NODE_DIR, env=environment, capture_output=True, text=True, timeout=120
    )


def run(node, cluster, case: str, prompt: str, **env: str) -> dict:
    """What the SDK made of the reply (see run.mjs)."""
    result = node_run(node, cluster, case, prompt, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("case", ["generate", "stream"])
def test_text_with_reasoning(node, cluster, case):
    marker = cluster.script(ANSWER_SCRIPT)
    result = run(node, cluster, case, f"Say hello. {marker}")
    assert result["text"] == "Hello from refserver."
    assert result["reasoningText"] == "Short thought."
    assert result["finishReason"] == "stop" and result["toolCalls"] == []
    usage = result["usage"]
    assert usage["outputTokens"] == len(cluster.tokens(ANSWER_SCRIPT))
    assert usage["inputTokens"] > 0
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    if case == "stream":
        assert result["textDeltas"] > 1


@pytest.mark.parametrize("case", ["generate-tools", "stream-tools"])
def test_tool_calls(node, cluster, case):
    marker = cluster.script(CALL_SCRIPT)
    result = run(node, cluster, case, f"Read my notes. {marker}")
    (call,) = result["toolCalls"]
    assert call["name"] == "read_file" and call["id"].startswith("call_")
    assert call["input"] == {"path": "/home/me/notes.md", "limit": 5}
    assert result["finishReason"] == "tool-calls"
    assert result["text"] == "Reading them."
    assert result["usage"]["outputTokens"] == len(cluster.tokens(CALL_SCRIPT))


def test_agent_loop_runs_the_tool_and_answers(node, cluster):
    first = cluster.script(CALL_SCRIPT)
    answer = "Read it.</think>The notes say: buy milk."
    second = cluster.script(answer)
    prompt = f"Summarize my notes. {first}"
    result = run(node, cluster, "agent", prompt, REFSERVER_TOOL_RESULT=f"milk {second}")
    assert result["steps"] == 2
    assert result["text"] == "The notes say: buy milk." and result["finishReason"] == "stop"
    assert result["usage"]["outputTokens"] == len(cluster.tokens(answer))
    total = len(cluster.tokens(CALL_SCRIPT)) + len(cluster.tokens(answer))
    assert result["totalUsage"]["outputTokens"] == total


def test_a_wrong_key_is_refused(node, cluster):
    result = node_run(node, cluster, "generate", "hi", api_key="wrong")
    assert result.returncode == 1 and "a valid API key is required" in result.stderr


@pytest.mark.parametrize("case", ["generate", "stream"])
def test_the_responses_api_model_shows_reasoning_asked_for_as_a_summary(node, cluster, case):
    """That SDK reads reasoning from summaries only: with reasoningSummary set, the
    reasoning is there; without it, it is in each item's content, which it ignores."""
    marker = cluster.script(ANSWER_SCRIPT)
    env = {"REFSERVER_API": "responses"}
    plain = run(node, cluster, case, f"Go. {marker}", **env)
    assert not plain["reasoningText"]
    env["REFSERVER_REASONING_SUMMARY"] = "auto"
    marker = cluster.script(ANSWER_SCRIPT)
    summarised = run(node, cluster, case, f"Go. {marker}", **env)
    assert summarised["reasoningText"] == "Short thought."
    assert summarised["text"] == "Hello from refserver." and summarised["warnings"] == []


@pytest.mark.parametrize("case", ["generate", "stream", "generate-tools", "stream-tools"])
def test_the_responses_api_model(node, cluster, case):
    script = CALL_SCRIPT if case.endswith("tools") else ANSWER_SCRIPT
    marker = cluster.script(script)
    result = run(node, cluster, case, f"Go. {marker}", REFSERVER_API="responses")
    if case.endswith("tools"):
        (call,) = result["toolCalls"]
        assert call["name"] == "read_file" and call["id"].startswith("call_")
        assert call["input"] == {"path": "/home/me/notes.md", "limit": 5}
        assert (result["text"], result["finishReason"]) == ("Reading them.", "tool-calls")
    else:
        assert (result["text"], result["finishReason"]) == ("Hello from refserver.", "stop")
    assert result["usage"]["outputTokens"] == len(cluster.tokens(script))


def test_the_responses_api_agent_refers_to_stored_items(node, cluster):
    """The SDK stores responses (its default) and sends the first step's text and
    reasoning back as item references: the second step reads them from the store."""
    first = cluster.script(CALL_SCRIPT)
    answer = "Read it.</think>The notes say: buy milk."
    second = cluster.script(answer)
    prompt = f"Summarize my notes. {first}"
    tool_result = f"milk {second}"
    env = {"REFSERVER_API": "responses", "REFSERVER_TOOL_RESULT": tool_result}
    result = run(node, cluster, "agent", prompt, **env)
    assert result["steps"] == 2
    assert result["text"] == "The notes say: buy milk." and result["finishReason"] == "stop"
