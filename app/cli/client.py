"""``imagerec upload | get | watch``: the user commands, built on the Python client.

Every HTTP call goes through ``imagerec.client.AsyncClient`` (the library users import), so
the CLI and programs share one implementation of the API: retries, errors, long-polls, the
event stream. This module adds what a terminal needs: folders walked for images, many uploads
in flight with a progress bar (rich), a summary table, and exit codes.

Exit codes (the same for every command, so scripts can tell failures apart):
0 success; 1 some images were refused or failed; 2 bad usage; 3 the gateway cannot be
reached; 4 the API key was rejected; 5 timed out waiting for results; 130 interrupted.
Every failure ends with one line on stderr that starts with ``error:``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from imagerec.client import (
    DEFAULT_URL,
    FINAL,
    AsyncClient,
    ImagerecError,
    KeyRejected,
    NotFound,
    Refused,
    Unreachable,
    WaitTimeout,
)

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
MAX_LONG_POLLS = 32       # results waited for at once with upload --wait
USER_AGENT = "imagerec-cli/0.1"

EXIT_FAILED, EXIT_UNREACHABLE, EXIT_KEY, EXIT_TIMEOUT, EXIT_INTERRUPTED = 1, 3, 4, 5, 130


class CliError(Exception):
    """A failure that ends the command with one ``error:`` line and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())      # one line, whatever the server sent
        self.code = code


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _run(coro_factory: Callable[[], Awaitable[int]]) -> None:
    """Run a command's coroutine; map CliError and Ctrl-C to one line and an exit code."""
    try:
        code = asyncio.run(coro_factory())
    except CliError as exc:
        _die(exc.message, exc.code)
    except KeyboardInterrupt:
        _die("interrupted", EXIT_INTERRUPTED)
    sys.exit(code)


def _key_hint(status: int | None, api_key: str | None) -> str:
    if status == 403:  # a valid key without the scope (e.g. a read-only key)
        return "this key's scopes do not allow it; `imagerec keys list` shows them"
    return ("no key was given; pass --api-key or set IMAGEREC_API_KEY" if not api_key
            else "check --api-key / IMAGEREC_API_KEY")


@asynccontextmanager
async def cli_client(url: str, api_key: str | None,
                  concurrency: int = 8) -> AsyncIterator[AsyncClient]:
    """The library's client; its errors become CliErrors with this CLI's exit codes."""
    client = AsyncClient(url, api_key, concurrency=concurrency + MAX_LONG_POLLS,
                         user_agent=USER_AGENT)
    try:
        yield client
    except KeyRejected as exc:
        raise CliError(f"{exc.message}; {_key_hint(exc.status, api_key)}", EXIT_KEY) from None
    except Unreachable as exc:
        raise CliError(exc.message, EXIT_UNREACHABLE) from None
    except ImagerecError as exc:
        raise CliError(exc.message) from None
    finally:
        await client.close()


def gateway_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--url and --api-key, read from the environment when not given."""
    func = click.option(
        "--api-key", envvar="IMAGEREC_API_KEY", default=None, metavar="KEY",
        help="API key (env IMAGEREC_API_KEY).")(func)
    func = click.option(
        "--url", envvar="IMAGEREC_GATEWAY_URL", default=DEFAULT_URL, show_default=True,
        metavar="URL", help="Gateway base URL (env IMAGEREC_GATEWAY_URL).")(func)
    return func


# ---------------------------------------------------------------------------------------
# Rendering


def _stdout() -> Console:
    """Tables go to stdout; when it is a pipe, do not squeeze them into 80 columns."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    return console


def _labels_text(labels: list[dict[str, Any]], limit: int = 5) -> str:
    return ", ".join(f"{item['label']} {item['score'] * 100:.1f}%" for item in labels[:limit])


def _status_style(status: str) -> str:
    return {"done": "green", "failed": "red", "refused": "red", "timeout": "yellow"}.get(
        status, "cyan")


def _print_result(console: Console, result: dict[str, Any]) -> None:
    """One result, readable: header line, then one row per label with a bar."""
    model = result.get("model") or {}
    status = result.get("status", "?")
    head = Text.assemble(
        (str(result.get("id")), "bold"), "  ", (status, _status_style(status)),
        f"  {model.get('name', '')} {model.get('version', '')}".rstrip())
    console.print(head)
    if result.get("error"):
        console.print(f"  reason: {result['error'].get('message')} [{result['error'].get('code')}]",
                      style="red")
    for item in result.get("labels") or []:
        score = float(item["score"])
        bar = "█" * round(score * 30)
        console.print(f"  {item['label'][:32]:<32} {score * 100:5.1f}% {bar}")


def _watch_line(result: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S")
    status = result.get("status", "?")
    if status == "done":
        detail = _labels_text(result.get("labels") or [], 3) or "(no label above threshold)"
    else:
        detail = (result.get("error") or {}).get("message", "")
    return f"{stamp}  {result.get('id')}  {status:<6}  {detail}"


# ---------------------------------------------------------------------------------------
# upload


@dataclass
class Item:
    """One file's journey: upload answer, then (with --wait) its final result."""

    path: Path
    id: str | None = None
    status: str = "pending"       # pending, queued, processing, done, failed, refused, timeout
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"file": str(self.path)}
        if self.result:
            doc.update(self.result)
        doc["status"] = self.status
        if self.error:
            doc["error"] = self.error
        return doc


def collect_files(paths: tuple[Path, ...]) -> Iterator[Path]:
    """Files named on the command line as given; folders walked for image files only.

    A file named explicitly is sent whatever its extension, so the server says what is
    wrong with it instead of the CLI skipping it silently.
    """
    seen: set[Path] = set()
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found = [path]
        for file in found:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                yield file


async def _upload_one(client: AsyncClient, item: Item) -> None:
    try:
        body = await client.upload(item.path)
    except (Refused, NotFound) as exc:
        item.status = "refused"
        item.error = {"code": exc.code, "message": exc.detail, "http_status": exc.status}
        return
    if isinstance(body, list):  # a multi-file answer; we sent one file
        body = body[0] if body else {}
    item.id = body.get("id")
    item.status = body.get("status", "queued")
    item.result = body
    item.error = body.get("error")


async def _wait_one(client: AsyncClient, item: Item, top_k: int, deadline: float) -> None:
    remaining = deadline - asyncio.get_running_loop().time()
    try:
        if remaining <= 0:
            raise WaitTimeout("no time left")
        result = await client.wait(item.id or "", timeout=remaining, top_k=top_k)
    except WaitTimeout:
        item.status = "timeout"
        item.error = {"code": "timeout", "message": "no result before --timeout"}
        return
    item.result = result
    item.status = result.get("status", item.status)
    item.error = result.get("error")


async def _gather_or_fail(coros: list[Awaitable[None]]) -> None:
    """Run all; the first error (gateway down, key rejected) cancels the rest and wins."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)  # type: ignore[arg-type]
    except* (CliError, ImagerecError) as errors:
        raise errors.exceptions[0] from None


def _display_name(path: Path, roots: tuple[Path, ...]) -> str:
    """A file found in a folder shows as ``folder/sub/file.jpg``: short, still unambiguous."""
    for root in roots:
        if root.is_dir() and path.is_relative_to(root):
            return str(Path(root.resolve().name or str(root)) / path.relative_to(root))
    return str(path)


def _summary_table(items: list[Item], waited: bool, roots: tuple[Path, ...]) -> Table:
    table = Table(title="imagerec results" if waited else "imagerec uploads", title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("top label / reason")
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("next labels", overflow="fold")
    for item in items:
        labels = (item.result or {}).get("labels") or []
        top = labels[0] if labels else None
        if item.error and item.status in {"failed", "refused", "timeout"}:
            label, score, rest = Text(item.error.get("message", ""), style="red"), "", ""
        elif top:
            label, score = Text(top["label"], style="bold"), f"{top['score'] * 100:.1f}%"
            rest = _labels_text(labels[1:], 2)
        else:
            label, score, rest = Text(""), "", ""
        table.add_row(_display_name(item.path, roots), item.id or "-",
                      Text(item.status, style=_status_style(item.status)), label, score, rest)
    return table


async def _upload(paths: tuple[Path, ...], url: str, api_key: str | None, wait: bool,
                  as_json: bool, concurrency: int, top_k: int, timeout: float) -> int:
    items = [Item(path) for path in collect_files(paths)]
    if not items:
        raise CliError("no image files found in " + ", ".join(map(str, paths)), 2)
    progress = Progress(
        SpinnerColumn(), TextColumn("{task.description:<10}"), BarColumn(),
        MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False)
    uploads = progress.add_task("uploaded", total=len(items), note="")
    results = progress.add_task("classified", total=len(items), note="", visible=wait)
    sem = asyncio.Semaphore(concurrency)
    polls = asyncio.Semaphore(MAX_LONG_POLLS)   # long-polls must not starve the uploads
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    counts = {"refused": 0, "failed": 0}

    async def one(gw: AsyncClient, item: Item) -> None:
        async with sem:
            await _upload_one(gw, item)
        if item.status == "refused":
            counts["refused"] += 1
        progress.update(uploads, advance=1, note=f"{counts['refused']} refused"
                        if counts["refused"] else "")
        if not wait:
            return
        if item.id and item.status not in FINAL:
            async with polls:
                await _wait_one(gw, item, top_k, deadline)
        if item.status in {"failed", "refused"}:
            counts["failed"] += 1
        progress.update(results, advance=1, note=f"{counts['failed']} not classified"
                        if counts["failed"] else "")

    async with cli_client(url, api_key, concurrency) as gw:
        # One cheap request first: a down gateway or a wrong key is then one clean line
        # before any progress bar is drawn, not fifty failed uploads.
        await gw.request("GET", "/v1/models", retries=0)
        with progress:
            try:
                await _gather_or_fail([one(gw, item) for item in items])
            except (CliError, ImagerecError):
                progress.live.transient = True   # the one error line is the whole story
                raise

    if as_json:
        click.echo(json.dumps([item.as_json() for item in items], ensure_ascii=False, indent=2))
    else:
        _stdout().print(_summary_table(items, wait, paths))
    bad = [i for i in items if i.status in {"refused", "failed"}]
    late = [i for i in items if i.status == "timeout"]
    if bad:
        first = bad[0]
        raise CliError(f"{len(bad)} of {len(items)} images were not classified "
                       f"(first: {first.path}: {(first.error or {}).get('message', first.status)})")
    if late:
        raise CliError(f"{len(late)} of {len(items)} results did not arrive within "
                       f"{timeout:g} s", EXIT_TIMEOUT)
    return 0


@click.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@gateway_options
@click.option("--wait", "-w", is_flag=True,
              help="Wait for every result (long-polls GET /v1/images/ID?wait=).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON array (one object per file) instead of the table.")
@click.option("--concurrency", "-c", default=8, show_default=True, type=click.IntRange(1, 64),
              help="Uploads in flight at once.")
@click.option("--top-k", "-k", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Labels per result (with --wait).")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(1),
              help="Seconds to wait for all results (with --wait).")
def upload(paths: tuple[Path, ...], url: str, api_key: str | None, wait: bool, as_json: bool,
           concurrency: int, top_k: int, timeout: float) -> None:
    """Upload images (files, or folders walked recursively) and print a summary table.

    Folders contribute only image files (.jpg .jpeg .png .webp .gif .bmp .tif .tiff);
    a file named explicitly is always sent. Progress goes to stderr, the table (or JSON)
    to stdout. Exit 0 when every image was accepted (and, with --wait, classified);
    1 when some were refused or failed, 3 gateway unreachable, 4 key rejected, 5 timeout.

    \b
    Examples:
      imagerec upload cat.jpg
      imagerec upload ~/Pictures/holiday --wait
      imagerec upload photos/ --wait --json > results.json
      IMAGEREC_API_KEY=... imagerec upload a.png b.png --url https://imagerec.example.org
    """
    _run(lambda: _upload(paths, url, api_key, wait, as_json, concurrency, top_k, timeout))


# ---------------------------------------------------------------------------------------
# get


async def _get(image_id: str, url: str, api_key: str | None, as_json: bool, wait: float,
               top_k: int) -> int:
    async with cli_client(url, api_key) as gw:
        try:
            result = await gw.get(image_id, top_k=top_k, wait=wait)
        except NotFound:
            raise CliError(f"no image with id {image_id} (404)") from None
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        _print_result(_stdout(), result)
    if result.get("status") == "failed":
        reason = (result.get("error") or {}).get("message", "unknown reason")
        raise CliError(f"image {image_id} failed: {reason}")
    return 0


@click.command()
@click.argument("image_id", metavar="ID")
@gateway_options
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON as the API sends it.")
@click.option("--wait", "-w", default=0.0, type=click.FloatRange(0, 60), metavar="SECONDS",
              help="Long-poll up to SECONDS for the result to finish.")
@click.option("--top-k", "-k", default=5, show_default=True, type=click.IntRange(1, 100),
              help="Labels to show.")
def get(image_id: str, url: str, api_key: str | None, as_json: bool, wait: float,
        top_k: int) -> None:
    """Show one image's status and labels (exit 1 when it failed or is unknown).

    \b
    Examples:
      imagerec get 01JD8Z6Q3V4W6S2M5N7P8R9T0A
      imagerec get 01JD8Z6Q3V4W6S2M5N7P8R9T0A --wait 30
      imagerec get 01JD8Z6Q3V4W6S2M5N7P8R9T0A --json | jq '.labels[0].label'
    """
    _run(lambda: _get(image_id, url, api_key, as_json, wait, top_k))


# ---------------------------------------------------------------------------------------
# watch


async def _watch(url: str, api_key: str | None, as_json: bool, count: int | None) -> int:
    seen = 0
    started = False

    def connected() -> None:
        nonlocal started
        if not started:
            click.echo(f"# watching {url.rstrip('/')}/v1/events (Ctrl-C to stop)", err=True)
        started = True

    def dropped(exc: ImagerecError | None) -> None:
        click.echo(f"# stream lost ({exc.message}); retrying" if exc else
                   "# stream ended; reconnecting", err=True)

    async with cli_client(url, api_key) as gw, \
            aclosing(gw.stream(on_connect=connected, on_drop=dropped)) as results:
        async for result in results:
            click.echo(json.dumps(result, ensure_ascii=False) if as_json
                       else _watch_line(result))
            seen += 1
            if count and seen >= count:
                return 0
    return 0


@click.command()
@gateway_options
@click.option("--json", "as_json", is_flag=True, help="Print each result as one JSON line.")
@click.option("--count", "-n", default=None, type=click.IntRange(1), metavar="N",
              help="Exit after N results.")
def watch(url: str, api_key: str | None, as_json: bool, count: int | None) -> None:
    """Follow results as they finish (the /v1/events stream); Ctrl-C stops.

    Reconnects by itself when the stream drops after it was established.

    \b
    Examples:
      imagerec watch
      imagerec watch --json | jq -r '.labels[0].label'
      imagerec watch --count 10
    """
    try:
        code = asyncio.run(_watch(url, api_key, as_json, count))
    except CliError as exc:
        _die(exc.message, exc.code)
    except KeyboardInterrupt:
        code = 0                 # Ctrl-C is how watch is meant to end
    sys.exit(code)
