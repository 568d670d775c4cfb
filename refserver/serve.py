"""Run one rank: rank 0 serves HTTP and drives the engine, the others follow."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from . import cluster as cluster_start
from .config import ServerConfig
from .control import ControlError
from .engine.follower import run_follower
from .engine.interface import Health, NotReadyError
from .engine.status import health_status
from .load_progress import StartupBoard

log = logging.getLogger("refserver")


class EngineSlot:
    """The API's engine before and after loading: 503 "loading" until attached, with
    every rank's loading progress."""

    def __init__(self):
        self.engine = None
        self.startup = StartupBoard()

    def attach(self, engine) -> None:
        self.engine = engine

    def submit_all(self, requests):
        if self.engine is None:
            raise NotReadyError("loading")
        return self.engine.submit_all(requests)

    def cancel(self, request_id: str) -> None:
        if self.engine is not None:
            self.engine.cancel(request_id)

    def health(self) -> Health:
        if self.engine is None:
            return Health(False, "loading")
        return self.engine.health()

    def status(self) -> dict:
        """The engine's snapshot for /metrics and the status page (see engine/status.py)."""
        health = self.health()
        status = health_status(health) if self.engine is None else self.engine.status()
        if health.reason == "loading":
            status["loading"] = self.startup.ranks()
        return status


def run_rank(config: ServerConfig) -> int:
    if config.cluster.rank != 0:
        try:
            cluster = cluster_start.start(config.cluster)
        except cluster_start.StartupError as exc:
            log.error("%s", exc)
            return 2
        return run_follower(cluster)
    return _run_leader(config)


def _run_leader(config: ServerConfig) -> int:
    from .api.server import PortUnavailableError, check_port_free, make_server, shutdown

    try:
        check_port_free(config.host, config.port)
    except PortUnavailableError as exc:
        log.error("%s", exc)
        cluster_start.report_failure(config.cluster, str(exc))
        return 2
    try:
        model_path = cluster_start.metadata_path(config.cluster.model)
        tokenizer, model_config = _tokenizer_and_config(model_path)
    except (cluster_start.StartupError, OSError, ValueError) as exc:
        log.error("%s", exc)
        cluster_start.report_failure(config.cluster, str(exc))
        return 2
    slot = EngineSlot()
    app = _make_app(config, slot, tokenizer, model_config)
    timeout = config.client_timeout
    server = make_server(
        app,
        config.host,
        config.port,
        config.http_threads,
        channel_timeout=timeout,
        cleanup_interval=min(10, timeout),
    )
    threading.Thread(target=server.run, name="http", daemon=True).start()
    log.info(
        "HTTP on http://%s:%d/v1 with %d threads (503 until every rank is loaded)",
        config.host,
        config.port,
        config.http_threads,
    )
    try:
        return _serve(config, slot, server, tokenizer, model_config)
    finally:
        shutdown(server)


def _serve(config, slot, server, tokenizer, model_config) -> int:
    from .engine.leader import PipelineEngine

    try:
        cluster = cluster_start.start(config.cluster, slot.startup)
    except cluster_start.StartupError as exc:
        log.error("%s", exc)
        return 2
    engine = PipelineEngine(
        cluster,
        eos_token_ids=_eos_ids(tokenizer, model_config),
        max_batch=config.max_batch,
        max_queue=config.max_queue,
        prefill_chunk=config.prefill_chunk,
        prefix_cache_tokens=config.prefix_cache_tokens,
    )
    slot.attach(engine)
    try:
        engine.wait_for_ranks()
    except ControlError as exc:
        log.error("start-up failed: %s", exc)
        return 2
    drain_on_stop_signals(engine.drain)
    code = engine.run(config.drain_seconds)
    log.info("drained; exiting")
    return code


def _make_app(config: ServerConfig, slot, tokenizer, model_config):
    from .api import ApiSettings, create_app, model_aliases_for

    settings = ApiSettings(
        model_name=config.served_model_name or Path(config.cluster.model).name,
        model_aliases=model_aliases_for(config.cluster.model),
        context_length=_context_length(model_config),
        default_max_tokens=config.max_tokens,
        max_tokens_cap=config.max_tokens_cap,
        max_body_bytes=config.max_body_bytes,
        api_keys=config.api_keys,
        allowed_origins=config.allowed_origins,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        chat_template_kwargs=config.chat_template_args,
        max_open_requests=config.max_batch + config.max_queue,
    )
    return create_app(slot, tokenizer, settings)


def _tokenizer_and_config(model_path: Path):
    import json

    from transformers import AutoTokenizer

    model_config = json.loads((model_path / "config.json").read_text())
    # The context as model_max_length lets the API refuse an impossible prompt by its
    # length, before tokenizing it.
    context = _context_length(model_config)
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), model_max_length=context)
    return tokenizer, model_config


def _context_length(model_config: dict) -> int:
    return model_config.get("max_position_embeddings", 4096)


def _eos_ids(tokenizer, model_config: dict) -> set[int]:
    ids = set()
    for value in (tokenizer.eos_token_id, model_config.get("eos_token_id")):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def drain_on_stop_signals(drain) -> None:
    """SIGTERM, SIGINT and SIGHUP drain the server instead of killing it mid-request."""
    from .engine.liveness import STOP_SIGNALS

    def handler(signum, _frame):
        log.info("received %s: draining", signal.Signals(signum).name)
        threading.Thread(target=drain, daemon=True).start()

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, handler)
