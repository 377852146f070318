"""Entry point of one worker process: agents, tables and web views in one Faust worker."""

from __future__ import annotations

import logging

from app.logs import configure_logging


def main() -> None:
    """Import every module that registers agents, tables and views, then run the worker."""
    import faust
    from faust.sensors.prometheus import setup_prometheus_sensors

    import agents.callbacks  # noqa: F401  (durable webhook delivery)
    import agents.classify  # noqa: F401  (registers agents, tables, views, timers)
    import agents.drops  # noqa: F401  (objects written straight to the drop prefix)
    import agents.reclassify  # noqa: F401  (stored originals, another model)
    import agents.results  # noqa: F401
    import web.admin  # noqa: F401  (operator endpoints: re-classification)
    import web.api  # noqa: F401
    import web.auth  # noqa: F401  (the gateway's key check; JSON 404/405)
    import web.console  # noqa: F401  (the operator console API)
    import web.openapi  # noqa: F401
    import web.views  # noqa: F401
    from app.faust_app import WORKER_ID, app

    setup_prometheus_sensors(app)

    worker = faust.Worker(app, loglevel=logging.INFO, redirect_stdouts=False,
                          override_logging=False)
    configure_logging(f"worker-{WORKER_ID}")
    _preload_model()
    worker.execute_from_commandline()


def _preload_model() -> None:
    """Load the model before joining the consumer group, not while holding partitions.

    Loading takes seconds. A worker that joins first lets fetched events pile up behind its
    first batch meanwhile, and a rebalance in that window makes faust-streaming skip and ack
    them (docs/OPERATIONS.md, "Known issues"). If the store is down now, the worker starts
    anyway and ``web.views.load_model`` keeps retrying.
    """
    from app.logs import get_logger
    from app.runtime import preload_classifier

    try:
        preload_classifier()
    except Exception as exc:  # noqa: BLE001 - not fatal: loaded later, readiness says so
        get_logger(__name__).warning("model not preloaded; loading after start",
                                     error=repr(exc)[:300])


if __name__ == "__main__":
    main()
