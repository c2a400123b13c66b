"""The ``priorscope`` command: a typer app whose subcommands live one group per module.

cli/ only parses arguments, builds a config, calls priorscope.engine and prints. Errors derived
from PriorscopeError print as one paragraph with the fix and exit 1 (2 for usage errors); pass
``--debug`` to see the traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from priorscope.engine.errors import PriorscopeError

# Each module defines register(app); a new command group is one new module plus one line here.
COMMAND_MODULES = (
    "priorscope.cli.data",
    "priorscope.cli.models",
    "priorscope.cli.capture",
    "priorscope.cli.analyze",
    "priorscope.cli.probe",
    "priorscope.cli.patch",
    "priorscope.cli.sweep",
)

err_console = Console(stderr=True)


def _root_callback(
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors."),
) -> None:
    """priorscope: is your VLM looking at the image, or answering from language priors?

    Example: priorscope demo --out demo_out
    """
    _STATE["debug"] = debug


_STATE: dict[str, bool] = {"debug": False}


def build_app() -> typer.Typer:
    """Return the typer app with every command group registered."""
    app = typer.Typer(
        name="priorscope",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode="rich",
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root_callback)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.register(app)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 success, 1 failure, 2 usage error)."""
    app = build_app()
    args = sys.argv[1:] if argv is None else argv
    _STATE["debug"] = "--debug" in args
    try:
        # standalone mode: click prints usage errors itself and exits 2 through SystemExit.
        app(args=args, prog_name="priorscope", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except PriorscopeError as exc:
        if _STATE["debug"]:
            err_console.print_exception()
        err_console.print(f"[bold red]Error:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except OSError as exc:  # a file the user named cannot be written or read: say which
        if _STATE["debug"]:
            err_console.print_exception()
        err_console.print(f"[bold red]Error:[/bold red] {_os_message(exc)}", highlight=False)
        return 1
    return 0


def _os_message(exc: OSError) -> str:
    """Return the one-paragraph message of a file-system error (path, reason, what to do)."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc)
    return (
        f"Expected to read or write {where}. Got '{reason}' instead. Check that its folder "
        "exists (and is not a file), that you may write there, and that the disk has space; "
        "pass --debug for the traceback."
    )


def entrypoint() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
