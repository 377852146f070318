"""``imagerec stack``: run the local stack (Kafka, MinIO, Redis, workers, gateway)."""

from __future__ import annotations

import sys

import click

from app.settings import get_settings


@click.group()
def stack() -> None:
    """Start, stop and inspect the local stack.

    \b
    Examples:
      imagerec stack up          # start everything, return when ready
      eval "$(imagerec stack env)"
      imagerec stack status
      imagerec stack down
    """


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(1)


@stack.command()
@click.option("--timeout", default=240.0, show_default=True, help="Seconds to wait for ready.")
@click.option("--topology", type=click.Choice(["single", "cluster"]), default=None,
              help="single (default) or cluster; same as IMAGEREC_TOPOLOGY.")
def up(timeout: float, topology: str | None) -> None:
    """Start everything detached; a no-op when already up."""
    import os

    from app.stack.manage import StackError
    from app.stack.manage import up as do_up

    if topology:
        os.environ["IMAGEREC_TOPOLOGY"] = topology
        get_settings.cache_clear()

    try:
        do_up(wait_timeout_s=timeout)
    except StackError as exc:
        _fail(exc)


@stack.command()
def down() -> None:
    """Stop every process of the stack."""
    from app.stack.manage import down as do_down

    do_down()


@stack.command()
def run() -> None:
    """Start everything and follow the logs in the foreground; Ctrl-C stops it all."""
    from app.stack.follow import run_foreground
    from app.stack.manage import StackError

    try:
        run_foreground()
    except StackError as exc:
        _fail(exc)


@stack.command()
def status() -> None:
    """Show each service's state."""
    from app.stack.layout import Layout
    from app.stack.manage import process_rss_mb, process_states, supervisor_running

    layout = Layout.from_settings(get_settings())
    if not supervisor_running(layout):
        click.echo("imagerec is not running")
        sys.exit(3)
    rss = process_rss_mb(layout)
    for name, state in sorted(process_states(layout).items()):
        memory = f"{rss[name]:8.0f} MB" if name in rss else ""
        click.echo(f"{name:24} {state:10} {memory}")
    click.echo(f"{'total':24} {'':10} {sum(rss.values()):8.0f} MB  "
               f"({get_settings().topology} topology)")


@stack.command()
@click.option("--admin", is_flag=True,
              help="Also print the admin storage user's credentials and the Kafka and Redis "
                   "endpoints (for the admin CLI on another shell; never the root key).")
def env(admin: bool) -> None:
    """Print what a client needs as shell export lines: the gateway URL and the dev key."""
    from app.stack.layout import Layout
    from app.stack.manage import env_lines
    from app.stack.secrets import ensure_secrets

    ensure_secrets(Layout.from_settings(get_settings()).secrets)  # same values `up` will use
    get_settings.cache_clear()
    settings = get_settings()
    for line in env_lines(settings, admin=admin):
        click.echo(line)


@stack.command()
@click.argument("action", type=click.Choice(["start", "stop", "restart"]))
@click.argument("service")
def ctl(action: str, service: str) -> None:
    """Start, stop or restart one service (e.g. `imagerec stack ctl stop redis`)."""
    from app.stack.manage import ctl as do_ctl

    try:
        do_ctl(action, service)
    except Exception as exc:  # noqa: BLE001 - supervisor faults carry a readable message
        _fail(exc)


@stack.command()
def init() -> None:
    """Create topics and buckets on already-running servers (used by docker-compose)."""
    from app.stack.provision import provision

    click.echo(provision(get_settings()))


@stack.command("compose-env")
@click.option("--file", "path", default=".env", show_default=True,
              help="Where docker compose reads its variables.")
def compose_env(path: str) -> None:
    """Write generated credentials for docker-compose.yml (mode 0600, kept on re-runs)."""
    from pathlib import Path

    from app.stack.secrets import ensure_secrets

    values = ensure_secrets(Path(path))
    click.echo(f"wrote {len(values)} settings to {path}")
