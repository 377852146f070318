"""``imagerec reclassify``: run stored originals through another model version.

A thin front of ``imagerec.client``'s ``reclassify`` (``POST /v1/admin/reclassify``, an
``admin`` key): the job runs in the
workers (app.reclassify), rate-limited and resumable, and this command draws its progress bar
from ``GET /v1/admin/reclassify/{job}``. Interrupting the command does not stop the job;
``--watch JOB`` follows it again, ``--cancel JOB`` stops it, and running the same command
again resumes it from its position (``--restart`` starts it over).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli.client import EXIT_FAILED, _run, cli_client, gateway_options
from imagerec.client import AsyncClient

POLL_S = 0.5


async def _follow(gw: AsyncClient, job: dict[str, Any], as_json: bool) -> int:
    """Poll until the job is done (or cancelled/failed), with a progress bar."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
    started, first_finished = time.monotonic(), job.get("finished", 0)
    with Progress(*columns, disable=as_json, transient=False) as bar:
        task = bar.add_task(f"reclassify {job.get('model')}", total=None, rate="")
        while True:
            total = job["total"] if job["total"] >= 0 else None
            if job["state"] != "running":
                total = job["enqueued"]
            speed = (job["finished"] - first_finished) / max(1e-3, time.monotonic() - started)
            bar.update(task, completed=job["finished"], total=total,
                       rate=f"{speed:.1f} img/s, {job['enqueued']} enqueued")
            if job["state"] in ("done", "cancelled", "failed"):
                break
            await asyncio.sleep(POLL_S)
            job = await gw.reclassify_job(job["id"])
    if as_json:
        click.echo(json.dumps(job))
    else:
        click.echo(f"job {job['id']}: {job['state']}, {job['finished']} of {job['enqueued']} "
                   f"images re-classified with {job['model']}")
    return 0 if job["state"] == "done" else EXIT_FAILED


async def _reclassify(url: str, api_key: str | None, body: dict[str, Any], watch: str | None,
                      cancel: str | None, wait: bool, as_json: bool) -> int:
    async with cli_client(url, api_key) as gw:
        if cancel:
            job = await gw.cancel_reclassify(cancel)
            click.echo(json.dumps(job) if as_json else f"job {cancel}: {job['state']}")
            return 0
        if watch:
            job = await gw.reclassify_job(watch)
        else:
            job = await gw.reclassify(**body)
            if not as_json:
                verb = "started" if job.get("new") else "resumed"
                click.echo(f"job {job['id']} {verb}: model {job['model']}"
                           + (f", since {job['since']}" if job.get("since") else "")
                           + (f", prefix {job['prefix']}" if job.get("prefix") else "")
                           + f", {job['rate']:g} images/s; Ctrl-C leaves it running "
                             f"(imagerec reclassify --watch {job['id']})")
        if not wait:
            click.echo(json.dumps(job) if as_json else f"job {job['id']}: {job['state']}")
            return 0
        return await _follow(gw, job, as_json)


@click.command()
@click.option("--model", "model", default=None, metavar="NAME[:VERSION]",
              help="Model to run (default: the configured default model); "
                   "`imagerec models list` shows them.")
@click.option("--since", default="", metavar="DATE",
              help="Only images uploaded at or after this ISO date/time (UTC).")
@click.option("--prefix", default="", metavar="P",
              help="Only images dropped into storage under this key prefix, e.g. "
                   "incoming/acme/cam7/.")
@click.option("--rate", type=float, default=None,
              help="Images per second (default: settings reclassify_rate).")
@click.option("--restart", is_flag=True, help="Start the job over instead of resuming it.")
@click.option("--watch", default=None, metavar="JOB", help="Follow a running job.")
@click.option("--cancel", default=None, metavar="JOB", help="Stop a job.")
@click.option("--no-wait", is_flag=True, help="Start it and return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the final job state as JSON.")
@gateway_options
def reclassify(model: str | None, since: str, prefix: str, rate: float | None, restart: bool,
               watch: str | None, cancel: str | None, no_wait: bool, as_json: bool, url: str,
               api_key: str | None) -> None:
    """Re-classify stored images with another model version (needs an admin key).

    Every image keeps each model's answer: the newest is served by default,
    `imagerec get ID` / `GET /v1/images/ID?model=NAME` reads another.

    \b
    Examples:
      imagerec reclassify --model efficientnet_lite0:1-579344248a93
      imagerec reclassify --since 2026-11-01 --prefix incoming/acme/
    """
    body: dict[str, Any] = {"model": model, "since": since, "prefix": prefix, "rate": rate,
                            "restart": restart}
    _run(lambda: _reclassify(url, api_key, body, watch, cancel, not no_wait, as_json))
