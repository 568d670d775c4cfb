"""The control plane: plain blocking TCP between rank 0 and every other rank.

Messages are length-prefixed JSON objects (never pickle: a stranger reaching the
port must not be able to run code). Rank 0 listens; each other rank connects once,
introduces itself with a hello (rank, cluster token, fingerprint) and then reads
step descriptors. Idle ranks block in recv here, which costs no CPU, instead of
polling an MLX collective.
"""

from __future__ import annotations

import hmac
import json
import logging
import queue
import socket
import struct
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

_HEADER = struct.Struct("!I")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# A hello (rank, token, a few facts) is small; anything larger is a stranger.
MAX_HELLO_BYTES = 64 * 1024
# How long rank 0 waits for a connecting peer's hello.
HELLO_TIMEOUT = 5.0


class ControlError(ConnectionError):
    """The control connection failed, closed or carried something unexpected."""


class Channel:
    """One framed, blocking connection."""

    def __init__(self, sock: socket.socket, peer: str):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.peer = peer
        # Several threads send on one channel (work items, heartbeats, shutdown).
        self._send_lock = threading.Lock()

    def send(self, message: dict) -> None:
        payload = json.dumps(message, separators=(",", ":")).encode()
        try:
            with self._send_lock:
                self.sock.sendall(_HEADER.pack(len(payload)) + payload)
        except OSError as exc:
            raise ControlError(f"send to {self.peer} failed: {exc}") from exc

    def recv(self, timeout: float | None = None, max_bytes: int = MAX_MESSAGE_BYTES) -> dict:
        """Block until a whole message arrives (or `timeout` seconds pass in all).

        The timeout bounds the whole message, so a peer trickling bytes cannot hold
        the reader for longer; a message over `max_bytes` is refused unread.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            (size,) = _HEADER.unpack(self._read_exact(_HEADER.size, deadline))
            if size > max_bytes:
                raise ControlError(f"{self.peer} sent a {size}-byte message")
            message = json.loads(self._read_exact(size, deadline))
        except TimeoutError as exc:
            raise ControlError(f"no message from {self.peer} within {timeout} s") from exc
        except (OSError, ValueError) as exc:
            raise ControlError(f"receive from {self.peer} failed: {exc}") from exc
        if not isinstance(message, dict):
            raise ControlError(f"{self.peer} sent a non-object message")
        return message

    def _read_exact(self, size: int, deadline: float | None) -> bytes:
        chunks = []
        while size:
            chunk = self._recv_some(min(size, 1 << 20), deadline)
            if not chunk:
                raise ControlError(f"{self.peer} closed the connection")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def _recv_some(self, size: int, deadline: float | None) -> bytes:
        if deadline is None:
            self.sock.settimeout(None)
            return self.sock.recv(size)
        remaining = deadline - time.monotonic()
        if remaining > 0:
            self.sock.settimeout(remaining)
            return self.sock.recv(size)
        # Past the deadline, bytes that already arrived still count: a rank resumed after
        # being stopped reads its peer's last message instead of timing out on it.
        self.sock.settimeout(0)
        try:
            return self.sock.recv(size)
        except BlockingIOError:
            raise TimeoutError from None

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@dataclass(frozen=True)
class Hello:
    """What a rank says about itself when it joins; rank 0 compares it with its own."""

    rank: int
    facts: dict

    def to_message(self, token: str) -> dict:
        return {"type": "hello", "rank": self.rank, "token": token, "facts": self.facts}


def connect_to_leader(
    address: tuple[str, int], hello: Hello, token: str, timeout: float
) -> Channel:
    """Connect to rank 0 (retrying until `timeout`), send hello, await the verdict."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection(address, timeout=2.0)
            break
        except OSError as exc:
            last_error = exc
            time.sleep(0.1)
    else:
        raise ControlError(
            f"rank 0's control port {address[0]}:{address[1]} did not accept a connection "
            f"within {timeout:g} s ({last_error})"
        )
    channel = Channel(sock, "rank 0")
    channel.send(hello.to_message(token))
    verdict = channel.recv(timeout=max(1.0, deadline - time.monotonic()))
    if verdict.get("type") != "welcome":
        channel.close()
        raise ControlError(verdict.get("error", f"rank 0 refused rank {hello.rank}"))
    return channel


def accept_peers(
    listener: socket.socket,
    world_size: int,
    allowed_hosts: set[str],
    token: str,
    timeout: float,
    check_hello,
) -> dict[int, Channel]:
    """Accept ranks 1..N-1 on rank 0's listener, refusing strangers.

    `check_hello(rank, facts)` returns an error message or None. A stranger (an
    address outside the hostfile, a wrong token, a duplicate or invalid rank) is
    refused and logged; it does not count towards the cluster. Hellos are read
    concurrently, so a connection that stays silent delays nobody. Any mismatch of
    facts is fatal and is reported to every peer that already joined.
    """
    channels: dict[int, Channel] = {}
    vetted: queue.Queue[tuple[Channel, int]] = queue.Queue()
    stop = threading.Event()
    args = (listener, world_size, allowed_hosts, token, vetted, stop)
    acceptor = threading.Thread(target=_accept_loop, args=args, name="control-accept", daemon=True)
    acceptor.start()
    deadline = time.monotonic() + timeout
    try:
        while len(channels) < world_size - 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(1, world_size)) - set(channels))
                _refuse_all(channels, "cluster start-up timed out")
                raise ControlError(
                    f"ranks {missing} did not join the control plane within {timeout:g} s"
                )
            try:
                channel, rank = vetted.get(timeout=remaining)
            except queue.Empty:
                continue
            if rank in channels:
                _refuse(channel, f"rank {rank} already joined")
                continue
            error = check_hello(rank, channel.hello_facts)
            if error:
                channel.send({"type": "refused", "error": error})
                channel.close()
                _refuse_all(channels, error)
                raise ControlError(error)
            channel.peer = f"rank {rank} at {channel.peer}"
            channels[rank] = channel
    finally:
        stop.set()
        # Out of accept() before the caller closes the listener: a socket closed while
        # a thread blocks in accept() keeps taking connections until that call returns.
        acceptor.join()
        while not vetted.empty():  # joined too late to count
            vetted.get_nowait()[0].close()
    for channel in channels.values():
        channel.send({"type": "welcome"})
    return channels


def _accept_loop(listener, world_size, allowed_hosts, token, vetted, stop) -> None:
    """Accept connections until `stop`; read each hello in a thread of its own."""
    listener.settimeout(0.05)  # how soon `stop` is seen
    while not stop.is_set():
        try:
            sock, (host, port) = listener.accept()
        except TimeoutError:
            continue
        except OSError:  # the listener was closed
            return
        channel = Channel(sock, f"{host}:{port}")
        if host not in allowed_hosts:
            log.warning("refused control connection from %s: not a cluster host", channel.peer)
            channel.close()
            continue
        args = (channel, world_size, token, vetted, stop)
        threading.Thread(target=_read_hello, args=args, name="control-hello", daemon=True).start()


def _read_hello(channel, world_size, token, vetted, stop) -> None:
    """Read and vet a hello; queue (channel, rank), or refuse the stranger."""
    try:
        hello = channel.recv(timeout=HELLO_TIMEOUT, max_bytes=MAX_HELLO_BYTES)
    except ControlError as exc:
        log.warning("refused control connection from %s: %s", channel.peer, exc)
        channel.close()
        return
    rank = hello.get("rank")
    reason = None
    if hello.get("type") != "hello":
        reason = "no hello"
    elif not hmac.compare_digest(str(hello.get("token", "")).encode(), token.encode()):
        reason = "wrong cluster token"
    elif not isinstance(rank, int) or not 0 < rank < world_size:
        reason = f"invalid rank {rank!r}"
    if reason:
        _refuse(channel, reason)
    elif stop.is_set():
        channel.close()
    else:
        channel.hello_facts = hello.get("facts", {})
        vetted.put((channel, rank))


def _refuse(channel: Channel, reason: str) -> None:
    log.warning("refused control connection from %s: %s", channel.peer, reason)
    try:
        channel.send({"type": "refused", "error": reason})
    except ControlError:
        pass
    channel.close()


def _refuse_all(channels: dict[int, Channel], error: str) -> None:
    for channel in channels.values():
        try:
            channel.send({"type": "refused", "error": error})
        except ControlError:
            pass
        channel.close()


def listen(host: str, port: int) -> socket.socket:
    """Rank 0's control listener."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ControlError(f"cannot listen for the control plane on {host}:{port}: {exc}") from exc
    listener.listen(64)
    return listener
