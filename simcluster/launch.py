"""Start N ring ranks on loopback, watch them, and tear every one of them down.

Each cluster gets its own free ports: the ring sockets use SO_REUSEPORT, so two
clusters on the same ports would cross-connect silently. We launch the ranks
ourselves rather than through `mlx.launch` (0.32.4 exits 0 when ranks fail and
its I/O loop keeps a core busy); users still deploy with `mlx.launch`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from refserver.api.server import FETCH_BAD_PORTS  # a server on one is out of clients' reach

TERMINATE_GRACE_SECONDS = 5.0
# Ports for ranks and servers come from LOWEST_PORT up to the ephemeral range (free_ports).
LOWEST_PORT = 10000
PORT_ATTEMPTS = 100
# Every port free_ports gave out in this process: two calls (a server's HTTP port, then
# its ranks' ports) must not hand out the same port while neither is bound yet.
_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_port_choice = random.Random()  # private, so a test seeding `random` cannot repeat ports


class RankFailed(RuntimeError):
    """A rank exited non-zero (or was killed); the others were stopped.

    `error` is the first ERROR line the rank logged, which often names the rank
    that was lost (rank 0 exits because rank 1 stopped answering).
    """

    def __init__(self, rank: int, returncode: int, error: str | None = None):
        how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        super().__init__(f"rank {rank} failed ({how})" + (f": {error}" if error else ""))
        self.rank = rank
        self.returncode = returncode
        self.error = error


def free_ports(count: int) -> list[int]:
    """Ports free now, all distinct (held open until all are chosen), never given out
    before by this process, none that a browser or Node's fetch refuses, and from below
    the kernel's ephemeral range: a port from inside it could be given to an outgoing
    connection (a health check, a rank's own connect) in the seconds before its rank
    listens on it, and that rank then fails to bind."""
    sockets: list[socket.socket] = []
    first_ephemeral = _first_ephemeral_port()
    with _handed_out_lock:
        try:
            tries = 0
            while len(sockets) < count:
                tries += 1
                if tries > count * PORT_ATTEMPTS:
                    raise OSError(f"no {count} free ports found in {count * PORT_ATTEMPTS} tries")
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind(("127.0.0.1", _candidate_port(first_ephemeral)))
                except OSError:  # taken (or held above for this call)
                    sock.close()
                    continue
                port = sock.getsockname()[1]
                # another caller's (maybe not bound yet), or one that clients refuse
                if port in _handed_out or port in FETCH_BAD_PORTS:
                    sock.close()
                    continue
                sockets.append(sock)
            ports = [s.getsockname()[1] for s in sockets]
            _handed_out.update(ports)
            return ports
        finally:
            for sock in sockets:
                sock.close()


def _candidate_port(first_ephemeral: int) -> int:
    """A random port between LOWEST_PORT and the ephemeral range, or 0 (the kernel's
    choice) where a system leaves too little room below that range."""
    if first_ephemeral - LOWEST_PORT < 1000:
        return 0
    return _port_choice.randrange(LOWEST_PORT, first_ephemeral)


def _first_ephemeral_port() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # IANA's dynamic ports: macOS's ephemeral range


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the launcher dies (Linux), and lead a new group."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class LocalCluster:
    """N local ranks of one command, as a context manager.

    `command` is one argv for all ranks or a function of the rank. `per_rank_env`
    adds or overrides variables for single ranks (e.g. a different split on one
    rank). Each output line is prefixed with `[rank r]` and passed to `sink`
    (default: this process's stderr).
    """

    def __init__(
        self,
        world_size: int,
        command: Sequence[str] | Callable[[int], Sequence[str]],
        env: dict[str, str] | None = None,
        per_rank_env: dict[int, dict[str, str]] | None = None,
        sink: Callable[[str], None] | None = None,
    ):
        if world_size < 1:
            raise ValueError(f"world size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.command = command
        self.env = dict(env or {})
        self.per_rank_env = per_rank_env or {}
        self.sink = sink or (lambda line: print(line, file=sys.stderr, flush=True))
        self.processes: list[subprocess.Popen] = []
        self._readers: list[threading.Thread] = []
        self._first_errors: dict[int, str] = {}
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self.control_port: int | None = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        ports = free_ports(self.world_size + 1)
        self.control_port = ports[-1]
        self._tmpdir = tempfile.TemporaryDirectory(prefix="simcluster-")
        hostfile = Path(self._tmpdir.name) / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports[:-1]]))
        try:
            for rank in range(self.world_size):
                self._spawn(rank, hostfile)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, rank: int, hostfile: Path) -> None:
        env = {**os.environ, **self.env, "MLX_RANK": str(rank), "PYTHONUNBUFFERED": "1"}
        if self.world_size > 1:
            env["MLX_HOSTFILE"] = str(hostfile)
            env["REFSERVER_CONTROL_PORT"] = str(self.control_port)
        env.update(self.per_rank_env.get(rank, {}))
        command = self.command(rank) if callable(self.command) else self.command
        process = subprocess.Popen(
            list(command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.processes.append(process)
        reader = threading.Thread(target=self._pump, args=(rank, process), daemon=True)
        reader.start()
        self._readers.append(reader)

    def _pump(self, rank: int, process: subprocess.Popen) -> None:
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if " ERROR " in line:
                self._first_errors.setdefault(rank, line.split(" ERROR ", 1)[1])
            self.sink(f"[rank {rank}] {line}")

    def poll_failure(self) -> RankFailed | None:
        """The first rank that has exited non-zero, if any."""
        for rank, process in enumerate(self.processes):
            code = process.poll()
            if code not in (None, 0):
                return RankFailed(rank, code, self._first_errors.get(rank))
        return None

    def wait(self, timeout: float | None = None) -> None:
        """Wait until every rank exits 0; on the first failure stop all and raise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(p.poll() is None for p in self.processes):
            failure = self.poll_failure()
            if failure:
                self.stop()  # also reads the rest of the failed rank's output
                raise RankFailed(
                    failure.rank, failure.returncode, self._first_errors.get(failure.rank)
                )
            if deadline is not None and time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"ranks still running after {timeout:g} s; stopped them")
            time.sleep(0.05)
        failure = self.poll_failure()
        self._join_readers()
        if failure:
            raise failure

    def exit_codes(self, timeout: float) -> list[int | None]:
        """Let the ranks exit on their own for up to `timeout` s; None = still running."""
        deadline = time.monotonic() + timeout
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        return [p.poll() for p in self.processes]

    def stop(self) -> None:
        """SIGTERM every rank's process group, then SIGKILL what is left."""
        for process in self.processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            _signal_group(process, signal.SIGKILL)
            process.wait()
        self._join_readers()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def _join_readers(self) -> None:
        for reader in self._readers:
            reader.join(timeout=2.0)

    def kill_rank(self, rank: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one rank (failure tests)."""
        _signal_group(self.processes[rank], sig)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
