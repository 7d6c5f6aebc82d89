"""``python -m tests.faulty_app``: ``python -m app`` with one fault planted, for the tests of what the service does
with an error nothing handles (a bug, not an input): every image's postprocess step raises, with a message that
quotes "patient data", which must never reach the log."""

from __future__ import annotations

from app.__main__ import main
from app.engine.engine import Engine

PLANTED_MESSAGE = "SMITH^JOHN 1.2.826.0.1.3680043.99.1"


def _fails(*args, **kwargs):
    raise RuntimeError(PLANTED_MESSAGE)


if __name__ == "__main__":
    Engine.postprocess = _fails  # type: ignore[method-assign]
    main()
