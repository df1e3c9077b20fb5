"""Shared fixtures: real Mosquitto brokers and a Numba cache shared by the test session."""

from __future__ import annotations

import os

import pytest

from support import Broker


def pytest_configure(config):
    cache = os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(str(config.rootpath), ".pytest_cache", "numba"))
    os.makedirs(cache, exist_ok=True)


@pytest.fixture
def broker(tmp_path):
    """A persistent Mosquitto on an ephemeral loopback port, stopped (SIGTERM) after the test."""
    b = Broker(tmp_path / "broker").start()
    yield b
    b.close()


@pytest.fixture(autouse=True)
def _natural_table_width(monkeypatch):
    """CLI tables at their natural width in every test and every CLI it starts: pytest-xdist's workers
    run with COLUMNS=80, which makes ``cmd_common.table`` wrap its last column (tests of the wrapping set
    COLUMNS themselves)."""
    monkeypatch.delenv("COLUMNS", raising=False)
