"""Entry point of one worker process: agents, tables and web views in one Faust worker."""

from __future__ import annotations

import logging

from app.logs import configure_logging


def main() -> None:
    """Import every module that registers agents, tables and views, then run the worker."""
    import faust
    from faust.sensors.prometheus import setup_prometheus_sensors

    import agents.classify  # noqa: F401  (registers agents, tables, views, timers)
    import agents.results  # noqa: F401
    import web.api  # noqa: F401
    import web.auth  # noqa: F401  (the gateway's key check; JSON 404/405)
    import web.openapi  # noqa: F401
    import web.views  # noqa: F401
    from app.faust_app import WORKER_ID, app

    setup_prometheus_sensors(app)

    worker = faust.Worker(app, loglevel=logging.INFO, redirect_stdouts=False,
                          override_logging=False)
    configure_logging(f"worker-{WORKER_ID}")
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
