"""``imagerec keys``: create, list and revoke API keys (an admin's tool).

Keys live hashed in the shared object store (see ``app.apikeys``); the gateway picks up a new
or revoked key within a few seconds, with no restart.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@contextmanager
def _key_store_errors() -> Iterator[None]:
    """One clear line for what admins can hit: a refused request or an unreachable store."""
    from app.apikeys import ApiKeyError

    try:
        yield
    except ApiKeyError as exc:
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - S3 down or misconfigured: say so, briefly
        _fail(f"cannot reach the key store ({exc!r}); is the stack up (`make up`)?")


def _keystore():  # noqa: ANN202 - imported lazily so `imagerec --help` stays fast
    from app.apikeys import KeyStore
    from app.cli.admin_storage import use_admin_storage

    use_admin_storage()

    return KeyStore()


@click.group()
def keys() -> None:
    """Manage the API keys clients send to the gateway.

    \b
    Examples:
      KEY=$(imagerec keys create --name alice)
      KEY=$(imagerec keys create --name ci --tenant alice --scope read --expires 2027-01-31)
      KEY=$(imagerec keys create --name ops --scope admin)
      imagerec keys list
      imagerec keys revoke alice
    """


@keys.command()
@click.option("--name", required=True, help="Who or what the key is for (a-z 0-9 . _ -).")
@click.option("--tenant", default=None,
              help="Whose images the key sees and uploads into (default: the key's name).")
@click.option("--scope", "scopes", default="upload,read", show_default=True,
              help="Comma-separated: upload, read, admin (admin: every tenant, operator "
                   "endpoints).")
@click.option("--expires", default=None,
              help="When the key stops working (ISO 8601, e.g. 2027-01-31T00:00:00Z).")
@click.option("--rate-limit", type=click.IntRange(min=1), default=None,
              help="This key's own limit in requests per second (the gateway's limit for "
                   "every key applies too).")
@click.option("--replace", "replace_active", is_flag=True,
              help="Rotate: issue a new key for a name that already has an active one.")
def create(name: str, tenant: str | None, scopes: str, expires: str | None,
           rate_limit: int | None, replace_active: bool) -> None:
    """Print a new key on stdout (one line; it is shown only this once)."""
    with _key_store_errors():
        key = _keystore().create(name, replace_active=replace_active, tenant=tenant,
                                 scopes=scopes, expires=expires, rate_limit=rate_limit)
    click.echo(key)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(as_json: bool) -> None:
    """Show every key's name, creation time and revocation time (never the key)."""
    from app.apikeys import format_records

    with _key_store_errors():
        rows = format_records(_keystore().records())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no API keys yet; create one with `imagerec keys create --name NAME`")
        return
    width = max(4, *(len(r["name"]) for r in rows))
    twidth = max(6, *(len(r["tenant"]) for r in rows))
    click.echo(f"{'NAME':<{width}}  {'TENANT':<{twidth}}  {'SCOPES':<19}  {'CREATED':<24}  "
               f"{'EXPIRES':<20}  REVOKED")
    for row in rows:
        click.echo(f"{row['name']:<{width}}  {row['tenant']:<{twidth}}  {row['scopes']:<19}  "
                   f"{row['created']:<24}  {row['expires'] or '-':<20}  {row['revoked'] or '-'}")


@keys.command()
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke the key called NAME; the gateway refuses it within a few seconds."""
    with _key_store_errors():
        record = _keystore().revoke(name)
    click.echo(f"revoked {record.name} at {record.revoked}")
