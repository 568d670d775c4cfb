"""A refserver cluster on loopback: N ranks, one HTTP endpoint, torn down on exit."""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from .launch import LocalCluster, RankFailed, free_ports


class ServerCluster:
    """`refserver` on `world_size` local ranks, as a context manager.

    Waits until /health is 200; `base_url` is the OpenAI base URL (…/v1).
    `rank_command(rank, command)` may change one rank's command (failure tests:
    another --model, a wrapper that delays the rank).
    """

    def __init__(
        self,
        world_size: int,
        model: Path,
        split: str | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        sink: Callable[[str], None] | None = None,
        rank_command: Callable[[int, list[str]], Sequence[str]] | None = None,
    ):
        self.port = port or free_ports(1)[0]
        self.host = host
        command = [
            sys.executable,
            "-m",
            "refserver",
            "--model",
            str(model),
            "--host",
            host,
            "--port",
            str(self.port),
            *extra_args,
        ]
        env = dict(env or {})
        if split:
            env["MINIMAX_PIPELINE_SPLIT"] = split
        launch = command if rank_command is None else lambda rank: rank_command(rank, command)
        self.ranks = LocalCluster(world_size, launch, env, sink=sink)

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def __enter__(self) -> ServerCluster:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.ranks.stop()

    def start(self, timeout: float = 180.0) -> None:
        self.ranks.start()
        try:
            self.wait_healthy(timeout)
        except BaseException:
            self.ranks.stop()
            raise

    def health(self) -> tuple[int, dict]:
        """(status, body) of /health; (0, {}) when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.root_url}/health", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json_body(exc)
        except (OSError, ValueError, http.client.HTTPException):  # a body cut off, too
            return 0, {}

    def status(self) -> dict:
        """The body of /status: every rank's layers, memory and steps, the requests held."""
        with urllib.request.urlopen(f"{self.root_url}/status", timeout=10) as response:
            return json.loads(response.read())

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            failure = self.ranks.poll_failure()
            if failure:
                raise failure
            if self.health()[0] == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"the cluster was not healthy within {timeout:g} s")

    def watch(self) -> None:
        """Block until a rank dies (raises RankFailed) or every rank exits cleanly."""
        self.ranks.wait()


__all__ = ["RankFailed", "ServerCluster"]


def _json_body(response) -> dict:
    """An error response's JSON body; {} when the server went away in the middle of it
    (as a lost rank's server does while it answers 503)."""
    try:
        return json.loads(response.read() or b"{}")
    except (OSError, ValueError, http.client.HTTPException):
        return {}
