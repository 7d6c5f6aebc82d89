"""``python -m app``: serve on 0.0.0.0:8000 (``--host``/``--port`` or COVIDSEG_HOST/COVIDSEG_PORT), with the
header deadline and connection cap of :mod:`app.core.server`."""

from __future__ import annotations

import argparse

from app.core.config import settings_from_environment
from app.core.logs import configure_logging


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_environment()
    p = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    p.add_argument("--host", default=settings.host)
    p.add_argument("--port", type=int, default=settings.port)
    p.add_argument("--model-path", default=None, help="ONNX model (default COVIDSEG_MODEL_PATH or the shipped one)")
    args = p.parse_args(argv)
    updates = {"host": args.host, "port": args.port}
    if args.model_path:
        updates["model_path"] = args.model_path
    settings = settings.model_copy(update=updates)
    configure_logging(settings.log_level)
    from app.core.server import serve
    from app.main import create_app

    # One worker: a second process would load a second copy of the model onto the same cores.
    app = create_app(settings)

    def stop_admitting() -> None:
        if app.state.service is not None:
            app.state.service.stop_admitting()

    serve(app, settings, app.state.metrics, on_shutdown=stop_admitting)


if __name__ == "__main__":
    main()
