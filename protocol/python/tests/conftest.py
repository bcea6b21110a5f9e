"""Shared fixtures: the vectors directory and a real PostgreSQL server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from vworkspace_hub.pgtest import PgServer  # noqa: E402

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """One PostgreSQL server for the test session (initdb + pg_ctl in a temp dir)."""
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()
