"""GET / (the live status page, package data in static/) and GET /status (its JSON).

The page is plain HTML, CSS and JavaScript with no build step and nothing fetched
from elsewhere (the Macs may be offline); it polls /status, which the API key guards
like every route but /health, /metrics and the page itself.
"""

from __future__ import annotations

import time
from pathlib import Path

from flask import Flask, Response, jsonify

from refserver.api.observe.metrics import ServerMetrics
from refserver.engine.interface import Engine
from refserver.engine.status import health_status

# The page's files, served by Flask as the app's static folder.
STATIC_FOLDER = Path(__file__).parent / "static"


def engine_status(engine: Engine) -> dict:
    """The engine's snapshot (see engine/status.py); from its health alone when it has
    none (a test double without a cluster)."""
    status = getattr(engine, "status", None)
    return status() if status is not None else health_status(engine.health())


class StatusRoutes:
    def __init__(self, engine: Engine, metrics: ServerMetrics, model_name: str):
        self._engine = engine
        self._metrics = metrics
        self._model_name = model_name

    def register(self, app: Flask) -> None:
        app.get("/", endpoint="status_page")(lambda: app.send_static_file("status.html"))
        app.get("/status")(self.status)

    def status(self) -> Response:
        """The snapshot, with the running totals the page turns into rates."""
        body = {"model": self._model_name, "time": time.monotonic()}
        return jsonify(body | engine_status(self._engine) | self._metrics.totals())
