"""The ``apq`` command line."""

from __future__ import annotations

import typer

from brevitas_apq import __version__

app = typer.Typer(
    name="apq",
    help="Adaptive quantisation-aware training of tiny time-series Transformers for FPGAs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brevitas-apq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Adaptive quantisation-aware training of tiny time-series Transformers for FPGAs."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
