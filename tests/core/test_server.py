"""The server's own settings checks (its behaviour with real clients is in tests/api/test_slow_clients.py)."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from app.core.server import serve


def test_a_probe_port_equal_to_the_service_port_is_refused_before_binding():
    with pytest.raises(SystemExit, match="COVIDSEG_PROBE_PORT must differ from the service's port 8000"):
        serve(object(), Settings(port=8000, probe_port=8000))  # type: ignore[arg-type]
