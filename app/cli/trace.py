"""``imagerec trace ID`` and ``imagerec logs --image ID``: where one image's time went, and
every log line about it.

``trace`` asks the gateway (``GET /v1/images/{id}?trace=1``), so it works from anywhere with a
key, and draws the waterfall the API computed (app.trace), the same one the web page draws.
``logs`` reads the local stack's log files (app.logtrail), so it runs where the stack runs.
"""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from app.cli.client import EXIT_FAILED, CliError, _run, _stdout, cli_client, gateway_options
from imagerec.client import NotFound

BAR_WIDTH = 40


def _bar(offset: float, ms: float, total: float) -> Text:
    """The stage's span on a line of BAR_WIDTH cells: where it starts and how long it is."""
    if total <= 0:
        return Text("")
    start = int(round((offset - ms) / total * BAR_WIDTH))
    width = max(1, int(round(ms / total * BAR_WIDTH))) if ms > 0 else 0
    return Text(" " * start) + Text("█" * width, style="cyan") + \
        Text("·" * max(0, BAR_WIDTH - start - width), style="dim")


def trace_table(trace: dict[str, Any]) -> Table:
    """The waterfall as a table: one row per stage."""
    table = Table(show_edge=False, pad_edge=False, box=None)
    table.add_column("stage")
    table.add_column("at (UTC)")
    table.add_column("+ms", justify="right")
    table.add_column("ms", justify="right")
    table.add_column("where the time went", no_wrap=True)
    table.add_column("what ended")
    total = float(trace.get("total_ms") or 0)
    for stage in trace.get("stages") or []:
        table.add_row(stage["stage"], stage["at"][11:23], f"{stage['offset_ms']:.1f}",
                      f"{stage['ms']:.1f}",
                      _bar(float(stage["offset_ms"]), float(stage["ms"]), total),
                      stage.get("what", ""))
    return table


async def _trace(image_id: str, url: str, api_key: str | None, as_json: bool) -> int:
    async with cli_client(url, api_key, concurrency=1) as client:
        try:
            result = await client.get(image_id, top_k=1, trace=True)
        except NotFound:
            raise CliError(f"no image with id {image_id} (404)") from None
    trace = result.get("trace") or {}
    if as_json:
        click.echo(json.dumps(trace, indent=2))
        return 0
    console = _stdout()
    labels = result.get("labels") or []
    top = f"  {labels[0]['label']} {labels[0]['score'] * 100:.1f}%" if labels else ""
    console.print(Text.assemble((image_id, "bold"), "  ", result.get("status", "?"), top,
                                f"  (answered from {result.get('source', '?')})"))
    if not trace.get("stages"):
        console.print("no stages recorded yet (queued, or uploaded before traces existed)")
        return EXIT_FAILED
    console.print(trace_table(trace))
    where = ", ".join(f"{k} {trace[k]}" for k in ("partition", "offset", "worker",
                                                  "batch_size") if k in trace)
    console.print(f"total {trace['total_ms']:.1f} ms from {trace['stages'][0]['stage']} to "
                  f"{trace['stages'][-1]['stage']}"
                  + ("" if trace.get("complete") else " (incomplete: some stages missing)"))
    console.print(f"request id {trace.get('request_id') or '-'}" + (f"; {where}" if where else "")
                  + f"; every log line: imagerec logs --image {image_id}")
    return 0


@click.command()
@click.argument("image_id", metavar="ID")
@gateway_options
@click.option("--json", "as_json", is_flag=True, help="Print the trace as the API sends it.")
def trace(image_id: str, url: str, api_key: str | None, as_json: bool) -> None:
    """Show where one image's time went, stage by stage, gateway to cache.

    \b
    Examples:
      imagerec trace 01JD8Z6Q3V4W6S2M5N7P8R9T0A
      imagerec trace 01JD8Z6Q3V4W6S2M5N7P8R9T0A --json | jq .total_ms
    """
    _run(lambda: _trace(image_id, url, api_key, as_json))


@click.command()
@click.option("--image", "image_id", required=True, metavar="ID",
              help="Every line about this image: its upload request, batch and result.")
@click.option("--request-id", "request_ids", multiple=True, metavar="RID",
              help="Also lines of this request id (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the lines as JSON, one a line.")
def logs(image_id: str, request_ids: tuple[str, ...], as_json: bool) -> None:
    """Print every log line of every local process about one image, in time order.

    Reads $IMAGEREC_HOME/logs (the gateway's access log, workers, functions), rotated
    files included; run it where the stack runs.

    \b
    Example:
      imagerec logs --image 01JD8Z6Q3V4W6S2M5N7P8R9T0A
    """
    from app.ids import is_image_id
    from app.logtrail import lines_about, render
    from app.settings import get_settings
    from app.stack.layout import Layout

    if not is_image_id(image_id):
        raise click.BadParameter(f"{image_id!r} is not an image id", param_hint="--image")
    logs_dir = Layout.from_settings(get_settings()).logs
    found = lines_about(image_id, logs_dir, request_ids)
    for line in found:
        if as_json:
            click.echo(json.dumps({"service": line.service, **line.fields}))
        else:
            click.echo(render(line))
    if not found:
        click.echo(f"error: no line in {logs_dir} mentions {image_id}", err=True)
        raise SystemExit(EXIT_FAILED)
