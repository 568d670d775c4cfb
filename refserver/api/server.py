"""Serve the app with waitress: threaded (one process shares the engine) and streaming.

waitress sends each write at once (``send_bytes`` is 1 by default since 3.0), so SSE
chunks reach the client as they are made. It reads request bodies asynchronously in
its main loop: a client that sends half a body and stalls holds no worker thread, and
is dropped after ``channel_timeout`` seconds.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
import uuid
from typing import Any

from flask import Flask
from waitress import create_server, wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import ErrorTask
from waitress.utilities import RequestEntityTooLarge

from refserver.api.anthropic.routes import is_anthropic_path
from refserver.api.errors import ApiError
from refserver.api.request_body import too_large_message
from refserver.api.settings import ApiSettings

log = logging.getLogger(__name__)

# The Fetch standard's "bad ports": browsers and Node's fetch (so the OpenAI and Vercel AI
# SDKs in Node) refuse to connect to them, with "bad port" / ERR_UNSAFE_PORT.
FETCH_BAD_PORTS = frozenset(
    {1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79, 87, 95}
    | {101, 102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137, 139, 143}
    | {161, 179, 389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540, 548, 554}
    | {556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049, 3659, 4045}
    | {4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679, 6697, 10080}
)


class PortUnavailableError(RuntimeError):
    """The address cannot be listened on (port in use, unknown host, no permission)."""


def check_port_free(host: str, port: int) -> None:
    """Bind the address and let it go, so that a busy port fails before the model loads."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortUnavailableError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
            try:
                sock.bind(address)
            except OSError as exc:
                raise PortUnavailableError(
                    f"cannot listen on {host}:{port}: {exc.strerror}; is another server "
                    "running there? Stop it or choose another --port"
                ) from None


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def warn_if_exposed(host: str, api_keys: tuple[str, ...]) -> None:
    """Log a warning when a non-loopback address is served without an API key."""
    if not api_keys and not is_loopback(host):
        log.warning(
            "serving on %s without an API key: anyone who can reach this address can use "
            "the model; set --api-key (or REFSERVER_API_KEY), or bind to 127.0.0.1",
            host,
        )


def warn_if_browsers_refuse(port: int) -> None:
    """Log a warning when browsers and Node clients will refuse to connect to `port`
    (curl and Python clients still can, so it is not an error)."""
    if port in FETCH_BAD_PORTS:
        log.warning(
            "port %d is one that browsers and Node's fetch refuse to connect to (\"bad "
            'port"): Node-based agents and web UIs cannot reach this server; choose '
            "another --port",
            port,
        )


def make_server(
    app: Flask,
    host: str,
    port: int,
    threads: int,
    *,
    channel_timeout: int = 60,
    cleanup_interval: int = 10,
) -> Any:
    """A waitress server for `app` (not started: call .run(), stop with shutdown()).

    Every streaming request holds one of the `threads` until it ends: more than the
    engine keeps open, or /health and the 429s wait behind the streams.

    Warns when `host` is not a loopback address and the app has no API key, and when
    browsers and Node clients refuse `port`.

    ``effective_port`` on the result is the port bound (useful with port 0).
    """
    settings: ApiSettings = app.extensions["refserver"]
    warn_if_exposed(host, settings.api_keys)
    warn_if_browsers_refuse(port)
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        connection_limit=max(100, 4 * threads),
        channel_timeout=channel_timeout,
        cleanup_interval=cleanup_interval,
        # Keep reading while a request runs, so that a client that hangs up is noticed
        # (environ["waitress.client_disconnected"]) and its generation cancelled.
        channel_request_lookahead=1,
        max_request_body_size=settings.max_body_bytes + 1,  # waitress refuses size >= limit
        asyncore_use_poll=True,  # select() cannot watch file descriptors above 1024
        ident="refserver",
        expose_tracebacks=False,
    )
    for listener in _listeners(server):
        listener.channel_class = _JsonErrorChannel
    return server


def shutdown(server: Any, flush_seconds: float = 10.0) -> None:
    """Stop a server made by make_server: close its sockets, stop its worker threads.

    Responses still being written, or made but not yet sent (a slow reader), first
    get up to `flush_seconds` to reach their clients: a drain must not cut them off.
    """
    deadline = time.monotonic() + flush_seconds
    while _unsent_responses(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.task_dispatcher.shutdown(timeout=1)
    for listener in _listeners(server):
        wasyncore.close_all(listener._map)


def _unsent_responses(server: Any) -> bool:
    for listener in _listeners(server):
        for channel in list(listener._map.values()):
            if isinstance(channel, HTTPChannel) and (channel.requests or channel.total_outbufs_len):
                return True
    return False


def _listeners(server: Any) -> list[BaseWSGIServer]:
    """The listening sockets: one, or several when a host name resolves to several."""
    if isinstance(server, MultiSocketServer):
        return [obj for obj in server.map.values() if isinstance(obj, BaseWSGIServer)]
    return [server]


class _JsonErrorTask(ErrorTask):
    """waitress's own rejections (bad Content-Length, body too large...) as error objects."""

    def execute(self) -> None:
        error = self.request.error
        code = error.reason.lower().replace(" ", "_")
        message = f"{error.reason}: {error.body}"
        if isinstance(error, RequestEntityTooLarge):  # waitress names its limit, one above ours
            message = too_large_message(self.channel.adj.max_request_body_size - 1)
        api_error = ApiError(error.code, message, code=code)
        path = getattr(self.request, "path", "") or ""
        anthropic = is_anthropic_path(path)
        body = json.dumps(api_error.anthropic_body() if anthropic else api_error.body()).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        request_id = uuid.uuid4().hex
        self.response_headers.append(("x-request-id", request_id))
        self.response_headers.append(("request-id", request_id))
        self.set_close_on_finish()
        self.channel.linger_before_close = True  # the rest of the body may still be arriving
        self.content_length = len(body)
        self.write(body)


# How long a connection refused mid-body is read and discarded before it is closed.
LINGER_SECONDS = 10.0


class _JsonErrorChannel(HTTPChannel):
    """waitress's channel, with its rejections as error objects and a lingering close.

    waitress refuses a body over the limit as soon as it reads the headers, answers, and
    closes. A client still sending the body then gets a connection reset, which destroys
    the answer it has not read yet: it sees a broken pipe, not the 413. So after an error
    answer the channel closes only its sending side, then reads and discards what the
    client still sends until it closes too (or LINGER_SECONDS pass), as nginx's
    lingering close does.
    """

    error_task_class = _JsonErrorTask
    linger_before_close = False
    _linger_deadline: float | None = None

    def handle_close(self) -> None:
        if self.linger_before_close and self._linger_deadline is None and self._stop_sending():
            self._linger_deadline = time.monotonic() + LINGER_SECONDS
            self.will_close = self.close_when_flushed = False  # readable again
            return
        super().handle_close()

    def _stop_sending(self) -> bool:
        if self.total_outbufs_len or not self.connected or self.socket is None:
            return False  # the answer was not all sent, or the client has gone: just close
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return True

    def readable(self) -> bool:
        if self._linger_deadline is not None and time.monotonic() > self._linger_deadline:
            # Closed from handle_write: the poll loop is iterating its channels now.
            self.will_close = True
            return False
        return super().readable()

    def handle_read(self) -> None:
        if self._linger_deadline is None:
            super().handle_read()
            return
        try:
            data = self.recv(self.adj.recv_bytes)
        except OSError:
            data = b""
        if not data:  # the client closed too
            self.will_close = True
