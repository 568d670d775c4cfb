"""The status page at GET / in a real headless Chromium (Debian's `chromium`, which
.ci/run installs): it loads, shows both ranks of a 2-rank cluster, updates while a
request runs, and asks for the API key instead of failing silently.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe):
JSON messages ending in a NUL byte on file descriptors 3 and 4, no extra packages.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import pytest
from rank_helpers import long_body, open_stream, wait_until
from test_load_progress import SLOW_LOAD

from simcluster.serve import ServerCluster

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)


class HeadlessChromium:
    """One page in a headless Chromium; `text(selector)` reads what it shows."""

    def __init__(self, url: str):
        if CHROMIUM is None:
            pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
        # A helper process may still be writing its profile when the browser has gone.
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        to_browser, self._commands = _pipe()
        self._replies, from_browser = _pipe()
        # Chromium reads commands from fd 3 and writes replies to fd 4 (the pipe ends sit
        # above 9, so that moving them there cannot overwrite one with the other).
        self._process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(3, 4),
            start_new_session=True,
            preexec_fn=lambda: (os.dup2(to_browser, 3), os.dup2(from_browser, 4)),
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        self._lock = threading.Lock()
        targets = self._call("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        self._session = self._call("Target.attachToTarget", targetId=page, flatten=True)[
            "sessionId"
        ]
        self._call("Page.navigate", url=url)

    def text(self, selector: str) -> str | None:
        """The text of the first element matching `selector` (None while there is none)."""
        expression = f"document.querySelector({json.dumps(selector)})?.innerText ?? null"
        result = self._call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def type_into(self, selector: str, value: str, submit: str) -> None:
        script = (
            f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)};"
            f"document.querySelector({json.dumps(submit)}).requestSubmit();"
        )
        self._call("Runtime.evaluate", expression=script)

    def close(self) -> None:
        """Close the browser and wait for it, helpers included (its own process group)."""
        try:
            self._call("Browser.close")
            self._process.wait(timeout=10)
        except (RuntimeError, OSError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
        os.close(self._commands)
        os.close(self._replies)
        self._profile.cleanup()

    def _call(self, method: str, **params) -> dict:
        with self._lock:
            self._next_id += 1
            message = {"id": self._next_id, "method": method, "params": params}
            if method.startswith(("Page.", "Runtime.")):
                message["sessionId"] = self._session
            os.write(self._commands, json.dumps(message).encode() + b"\0")
            while True:
                reply = self._read()
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._replies, 65536)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


def _pipe() -> tuple[int, int]:
    """A pipe whose two ends are file descriptors above 9."""
    ends = []
    for end in os.pipe():
        ends.append(fcntl.fcntl(end, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(end)
    return ends[0], ends[1]


@pytest.fixture
def page_of():
    pages = []

    def open_page(url: str) -> HeadlessChromium:
        pages.append(HeadlessChromium(url))
        return pages[-1]

    yield open_page
    for page in pages:
        page.close()


def test_shows_both_ranks_and_updates_while_a_request_runs(tiny_model, page_of):
    with ServerCluster(2, tiny_model) as cluster:
        page = page_of(cluster.root_url + "/")
        assert wait_until(lambda: page.text("#health") == "healthy", timeout=20)
        rows = page.text("#ranks tbody")
        assert "rank 0" in rows and "rank 1" in rows
        assert "2–3 + head" in rows and "0–1 + embedding" in rows
        assert page.text("#running") == "0"
        before = int(float(page.text("#generated")))
        sock, _ = open_stream(cluster, long_body(max_tokens=3000), events=2)
        try:
            assert wait_until(lambda: page.text("#running") == "1", timeout=10)
            generated = int(float(page.text("#generated")))
            assert generated > before
            # The page keeps refreshing itself while the request runs.
            assert wait_until(lambda: int(float(page.text("#generated"))) > generated, timeout=10)
            assert wait_until(lambda: page.text("#tokens-per-second") not in ("–", "0.0"), 10)
            assert wait_until(lambda: " ms" in page.text("#ranks tbody"), timeout=10)
            assert wait_until(lambda: " %" in page.text("#ranks tbody"), timeout=10)
        finally:
            sock.close()
        assert wait_until(lambda: page.text("#running") == "0", timeout=10)


def test_asks_for_the_api_key_and_uses_it(tiny_model, page_of):
    args = ("--api-key", "page-secret")
    with ServerCluster(1, tiny_model, extra_args=args) as cluster:
        page = page_of(cluster.root_url + "/")
        assert wait_until(lambda: page.text("#health") == "API key required", timeout=20)
        assert "needs an API key" in page.text("#auth")
        page.type_into("#api-key", "wrong", submit="#auth-form")
        assert wait_until(lambda: "refused" in (page.text("#auth-message") or ""), timeout=10)
        page.type_into("#api-key", "page-secret", submit="#auth-form")
        assert wait_until(lambda: page.text("#health") == "healthy", timeout=10)
        assert "rank 0" in page.text("#ranks tbody")


def test_shows_each_rank_loading_while_the_cluster_starts(tiny_model, tmp_path, page_of):
    script = tmp_path / "slow_load.py"
    script.write_text(SLOW_LOAD)

    def slowly(rank, command):
        return [sys.executable, str(script), *command[3:]]  # command: python -m refserver ...

    cluster = ServerCluster(2, tiny_model, rank_command=slowly)
    cluster.ranks.start()
    try:
        assert wait_until(lambda: cluster.health()[0] == 503, timeout=30)
        page = page_of(cluster.root_url + "/")

        def both_loading() -> bool:
            text = page.text("#loading") or ""
            return "rank 0: loaded" in text and "rank 1: loaded" in text and "of 2 layers" in text

        assert wait_until(both_loading, timeout=30)
        assert page.text("#health") == "loading"
        cluster.wait_healthy(timeout=60)
        assert wait_until(lambda: page.text("#health") == "healthy", timeout=10)
        assert page.text("#loading") == ""
    finally:
        cluster.ranks.stop()
