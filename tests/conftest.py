"""Shared fixtures: tiny models built once per session (never downloaded)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from simcluster.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", preset="tiny")


@pytest.fixture(scope="session")
def tiny_model_q4(tmp_path_factory):
    from simcluster.tinymodel import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-q4", preset="tiny", quantize_bits=4
    )


@pytest.fixture(scope="session")
def tiny_model_other_seed(tmp_path_factory):
    from simcluster.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-s1", preset="tiny", seed=1)
