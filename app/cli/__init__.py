"""The ``imagerec`` command line: one click group, one module per command family."""

from __future__ import annotations

import importlib

import click

# Each entry is "module:attribute" of a click command or group; adding a family is one line.
_COMMANDS = [
    "app.cli.stack:stack",
    "app.cli.classify:classify",
    "app.cli.models:models",
    "app.cli.keys:keys",
    "app.cli.client:upload",
    "app.cli.client:get",
    "app.cli.client:watch",
    "app.cli.reclassify:reclassify",
    "app.cli.trace:trace",
    "app.cli.trace:logs",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """imagerec: self-hosted image recognition.

    \b
    Examples:
      imagerec classify photo.jpg
      imagerec stack env
    """


for _spec in _COMMANDS:
    _mod, _attr = _spec.split(":")
    try:
        main.add_command(getattr(importlib.import_module(_mod), _attr))
    except ModuleNotFoundError as exc:  # a family still being written must not break the rest
        if exc.name != _mod:
            raise
