"""Entry point of one worker process: agents, tables and web views in one Faust worker."""

from __future__ import annotations

import logging

from app.logs import configure_logging


def main() -> None:
    """Import every module that registers agents, tables and views, then run the worker."""
    from app.faust_app import WORKER_ID, app
    import web.views  # noqa: F401  (registers views)

    try:  # the pipeline modules register agents and tables when present
        import agents.classify  # noqa: F401
        import agents.results  # noqa: F401
    except ModuleNotFoundError:
        pass
    import faust

    worker = faust.Worker(app, loglevel=logging.INFO, redirect_stdouts=False,
                          override_logging=False)
    configure_logging(f"worker-{WORKER_ID}")
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
