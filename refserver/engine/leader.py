"""Rank 0's engine: the API's `Engine`, and the lock-step loop that drives every rank.

The loop runs in the main thread (the thread that owns this rank's MLX arrays);
HTTP threads only queue requests and cancellations and read event queues.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import asdict

import mlx.core as mx

from ..cluster import Cluster
from ..control import ControlError
from .chunking import DEFAULT_PREFILL_CHUNK, ChunkPolicy, ChunkSizer
from .executor import StageExecutor
from .interface import (
    CapacityError,
    ErrorEvent,
    Event,
    Finished,
    GenerationRequest,
    Health,
    NotReadyError,
)
from .kv_budget import KV_STEP, LEAST_POSITIONS, KvLedger, RankKv, least_useful_budget
from .liveness import (
    BLAME_DELAY_SECONDS,
    IDLE_WAKE_SECONDS,
    StepWatchdog,
    exit_soon,
    is_ring_error,
    send_heartbeats,
    watch_peer,
)
from .mlx_memory import IdleRelease
from .open_requests import OpenRequests
from .rank_stats import RankReports
from .sampling import Draw
from .scheduler import Scheduler, Sequence
from .status import cluster_status
from .work import Decode, Prefill, WorkItem, to_message

log = logging.getLogger(__name__)

# How long rank 0 keeps serving error events after a rank is lost, before it exits.
FAIL_GRACE_SECONDS = 2.0


class PipelineEngine:
    def __init__(
        self,
        cluster: Cluster,
        eos_token_ids: set[int],
        max_batch: int = 8,
        max_queue: int = 64,
        prefill_chunk: ChunkPolicy | None = None,
        prefix_cache_tokens: int = 0,
    ):
        config = cluster.config
        self.cluster = cluster
        self.executor = StageExecutor(cluster.stage)
        self.memory = IdleRelease()
        prefill_chunk = prefill_chunk or ChunkPolicy.parse(DEFAULT_PREFILL_CHUNK)
        self.chunks = ChunkSizer(prefill_chunk)
        log.info("prefill chunks: %s; prefix cache: %d tokens", prefill_chunk, prefix_cache_tokens)
        self.scheduler = Scheduler(
            eos_token_ids,
            micro_batches=cluster.world_size,
            max_batch=max_batch,
            chunks=self.chunks,
            prefix_cache_tokens=prefix_cache_tokens,
        )
        # As many items in flight as there are stages keeps every stage busy.
        self.depth = cluster.world_size
        self.open = OpenRequests(max_batch + max_queue)
        self.peers = dict(cluster.channels)
        self.first_stage = cluster.world_size - 1
        self.inflight: deque = deque()
        # One rank: the next decode step, already running, with its sampling.
        self._started: tuple[WorkItem, Draw | None] | None = None
        # One rank: the lazy input tokens of a decode issued ahead, by micro-batch.
        self._ahead_inputs: dict[int, mx.array] = {}
        self._inbox: deque = deque()
        self._wake = threading.Condition()
        self._lock = threading.Lock()
        self._failure: str | None = None
        self._loading = True
        self._draining = False
        # Set when rank 0 stops the cluster cleanly: heartbeats end, and peers that
        # leave after that are no failure.
        self._stopped = threading.Event()
        self.watchdog = StepWatchdog(config.step_timeout, self.fail)
        self._kv_by_rank: dict[int, RankKv] = {0: cluster.kv}
        self.reports = RankReports()  # each peer's latest heartbeat

    # -- the API side ------------------------------------------------------
    def submit_all(self, requests: Seq[GenerationRequest]) -> list[Iterator[Event]]:
        health = self.health()
        if not health.ok:
            raise NotReadyError(health.reason)
        for request in requests:
            self._check_capacity(request)
        sequences = [Sequence(request) for request in requests]
        self.open.admit(sequences)
        for sequence in sequences:
            self._post(("add", sequence))
        return [self._events(sequence) for sequence in sequences]

    def _events(self, sequence: Sequence) -> Iterator[Event]:
        finished = False
        try:
            while True:
                event = sequence.events.get()
                finished = isinstance(event, Finished | ErrorEvent)
                yield event
                if finished:
                    return
        finally:
            if not finished:
                self.cancel(sequence.id)
            self.open.close(sequence.id)

    def _check_capacity(self, request: GenerationRequest) -> None:
        ledger, prompt = self.scheduler.ledger, len(request.prompt_tokens)
        if ledger is not None and ledger.never_fits(prompt, prompt + request.max_tokens):
            raise CapacityError(
                f"the prompt ({prompt} tokens) and max_tokens ({request.max_tokens}) need "
                f"more KV memory than this cluster has: it holds {ledger.capacity_tokens} "
                "tokens, a prompt's own cache while it is prefilled included; shorten the "
                "prompt or lower max_tokens",
                prompt,
                request.max_tokens,
                ledger.reach_limit(prompt),
                ledger.longest_prompt(),
            )

    def cancel(self, request_id: str) -> None:
        self._post(("cancel", request_id))

    def health(self) -> Health:
        ranks = self.cluster.world_size
        if self._failure:
            return Health(False, self._failure, ranks)
        if self._loading:
            return Health(False, "loading", ranks)
        if self._draining:
            return Health(False, "draining: the server is shutting down", ranks)
        return Health(True, "", ranks, self.kv_status())

    def status(self) -> dict:
        """A snapshot of the cluster for /metrics and the status page (see status.py)."""
        return cluster_status(self)

    def kv_status(self) -> dict | None:
        ledger = self.scheduler.ledger
        if ledger is None:
            return None
        cache = self.scheduler.prefix_cache
        return {
            "capacity_tokens": ledger.capacity_tokens,
            "used_tokens": self.scheduler.kv_used,
            "peak_tokens": ledger.high_water,
            "cached_prefix_tokens": cache.index.cached_tokens if cache else 0,
            "ranks": {rank: asdict(kv) for rank, kv in sorted(self._kv_by_rank.items())},
        }

    def _post(self, message) -> None:
        with self._wake:
            self._inbox.append(message)
            self._wake.notify()

    # -- failure and shutdown ----------------------------------------------
    def fail(self, reason: str) -> None:
        """A rank is lost: fail every request, turn /health 503, end every rank.

        `reason` reaches clients and /health, so it names the rank but carries no
        exception text; the callers log the details.
        """
        with self._lock:
            if self._failure or self._stopped.is_set():
                return
            self._failure = reason
        streams = self.open.snapshot()
        log.error("cluster failure: %s; failing %d request(s) and exiting", reason, len(streams))
        for sequence in streams:
            sequence.events.put(ErrorEvent(f"the cluster failed: {reason}"))
        self._tell_peers({"type": "shutdown", "error": reason})
        exit_soon(1, FAIL_GRACE_SECONDS)

    def drain(self) -> None:
        """Stop taking requests; the loop ends once the running ones finish."""
        self._draining = True
        self._post(("drain", None))

    def _tell_peers(self, message: dict) -> None:
        for channel in self.peers.values():
            try:
                channel.send(message)
            except ControlError:
                pass

    # -- the loop ------------------------------------------------------------
    def wait_for_ranks(self) -> None:
        """Every rank has loaded its stage; then start them, watch them, turn healthy."""
        for rank in self.peers:
            message = self.cluster.startup.first_message(rank)  # after its progress reports
            if message.get("type") != "ready":
                error = message.get("error", f"rank {rank} sent {message.get('type')!r}")
                self._tell_peers({"type": "shutdown", "error": error})
                raise ControlError(error)
            self._kv_by_rank[rank] = RankKv(**message["kv"])
        self._size_kv()
        self._tell_peers({"type": "start"})
        interval = self.cluster.config.heartbeat_interval
        send_heartbeats(list(self.peers.values()), interval, self._stopped)
        timeout = self.cluster.config.heartbeat_timeout
        for rank, channel in self.peers.items():
            heard = self.reports.listener(rank)
            watch_peer(rank, channel, timeout, self.fail, self._stopped, heard)
        self._loading = False
        log.info("all %d rank(s) loaded; ready", self.cluster.world_size)

    def _size_kv(self) -> None:
        """The cluster holds as many tokens of KV as its tightest rank."""
        tightest = min(self._kv_by_rank, key=lambda r: self._kv_by_rank[r].capacity_tokens)
        kv = self._kv_by_rank[tightest]
        ledger = KvLedger(kv.capacity_tokens)
        if ledger.never_fits(1, 2):  # not even a one-token prompt and its one token
            enough = least_useful_budget(list(self._kv_by_rank.values()))
            error = (
                f"the KV budget is too small: rank {tightest}'s {kv.budget_bytes} bytes hold "
                f"{kv.capacity_tokens} tokens at {kv.bytes_per_token} bytes each, and a "
                f"request needs at least {LEAST_POSITIONS} (its prompt's cache and its row take "
                f"{KV_STEP} positions each): set --kv-budget to at least {enough} bytes"
            )
            self._tell_peers({"type": "shutdown", "error": error})
            raise ControlError(error)
        self.scheduler.ledger = ledger
        log.info("KV capacity: %d tokens (rank %d is the tightest)", kv.capacity_tokens, tightest)

    def run(self, drain_seconds: float = 30.0) -> int:
        """Serve until drained (returns 0) or failed (the process exits non-zero)."""
        drain_deadline = None
        try:
            while True:
                if self._take_inbox() and drain_deadline is None:
                    drain_deadline = time.monotonic() + drain_seconds
                if drain_deadline is not None:
                    if not self.scheduler.active and not self.inflight:
                        self.scheduler.flush()  # the last requests' Finished events
                        break
                    if time.monotonic() > drain_deadline:
                        self.scheduler.fail_all("the server shut down before this finished")
                        break
                self._step()
        except ControlError as exc:
            log.error("the control plane failed: %s", exc)
            self.fail("a rank was lost")
        except Exception as exc:  # any failure here leaves the ranks out of step
            if is_ring_error(exc):
                log.error("the MLX ring failed: %s", exc)
                # The ring does not say which rank went away; the watcher of the lost
                # rank's control connection does, given a moment (first one wins).
                time.sleep(BLAME_DELAY_SECONDS)
                self.fail("a rank was lost")
            else:
                log.exception("engine loop failed")
                self.fail(f"internal error on rank 0 ({type(exc).__name__})")
        with self._lock:
            if self._failure is None:
                self._stopped.set()
        if not self._stopped.is_set():
            self._block_until_exit()  # fail() ends the process with a non-zero code
        self._tell_peers({"type": "shutdown"})
        return 0

    def _step(self) -> None:
        self.scheduler.expire(time.monotonic())
        # One more than the stages: micro-batches issued ahead must leave room to
        # start new prompts.
        while len(self.inflight) < self.depth + 1:
            item = self.scheduler.next_item()
            if item is None:
                break
            self._broadcast(item)
        if not self.inflight:
            self.scheduler.flush()
            # Once no request is open: a finished sequence's arrays (its sampler's
            # history) are freed when its HTTP thread lets go of it, maybe just after.
            if not self.scheduler.active and not len(self.open):
                self.memory.idle()
            with self._wake:
                if not self._inbox:
                    self._wake.wait(timeout=0.5 if self.scheduler.active else IDLE_WAKE_SECONDS)
            return
        item = self.inflight.popleft()
        self.memory.working()
        ahead = self.scheduler.decode_ahead(item)
        if ahead is not None:
            self._broadcast(ahead)
        self.watchdog.begin()
        began = time.monotonic()
        if self._started is not None and self._started[0] is item:
            sampling, self._started = self._started[1], None
        else:
            inputs = self._ahead_inputs.pop(item.batch, None) if isinstance(item, Decode) else None
            sampling = self._start(item, inputs)
        if ahead is not None:
            tokens = self.scheduler.ahead_tokens(item, ahead, sampling)
            if self.cluster.world_size > 1:
                # The first stage's graph for `ahead` waits for them in the ring. Wait
                # here until they are sent: on few cores, this thread waking while the
                # send is due delayed the send by a scheduler slice (measured ~1.5 ms).
                mx.eval(mx.distributed.send(tokens, self.first_stage, group=self.cluster.group))
            elif self.inflight[0] is ahead:
                # One rank: queue the next step before reading this one, as
                # mlx_lm.generate_step does, so building its graph overlaps compute.
                self._started = (ahead, self._start(ahead, tokens))
            else:
                self._ahead_inputs[ahead.batch] = tokens  # runs after the items before it
        # The HTTP threads take the last step's tokens while this step computes.
        self.scheduler.flush()
        self.scheduler.on_result(item, sampling)
        if isinstance(item, Prefill):
            self.chunks.observe(len(item.tokens), time.monotonic() - began)
        elif isinstance(item, Decode):
            self.chunks.stepped(item.batch, time.monotonic())
        self.watchdog.end()
        self.executor.ring_wait.step_done()

    def _start(self, item: WorkItem, inputs: mx.array | None = None) -> Draw | None:
        """Run `item` on this rank and start sampling what it produced."""
        logits = self.executor.run(item, inputs)
        sampling = self.scheduler.start_sampling(item, logits)
        if sampling is None and isinstance(logits, mx.array):
            # Unsampled (cancelled), but its ring receive must happen. (A scored chunk's
            # PositionLogits hold hidden states that were evaluated with the receive.)
            mx.eval(logits)
        return sampling

    def _broadcast(self, item) -> None:
        """Send `item` to every rank and queue it for this one, in issue order."""
        message = to_message(item)
        for channel in self.peers.values():
            channel.send(message)
        self.inflight.append(item)

    def _take_inbox(self) -> bool:
        """Apply queued adds and cancels; True when a drain was requested."""
        with self._wake:
            messages, self._inbox = list(self._inbox), deque()
        drain = False
        for kind, value in messages:
            if kind == "add":
                self.scheduler.add(value)
            elif kind == "cancel":
                self.scheduler.cancel(value)
            elif kind == "drain":
                drain = True
        return drain

    def _block_until_exit(self) -> None:
        while True:
            time.sleep(1.0)
