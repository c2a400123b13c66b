"""The ``priorscope`` command: a typer app whose subcommands live one group per module.

cli/ only parses arguments, builds a config, calls priorscope.engine and prints. Errors derived
from PriorscopeError print as one paragraph with the fix and exit 1 (2 for usage errors); pass
``--debug`` to see the traceback.
"""

from __future__ import annotations

import errno
import importlib
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


INTERRUPTED = 130  # what a shell reports for a process ended by SIGINT


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 success, 1 failure, 2 usage error, 130 Ctrl-C)."""
    app = build_app()
    args = sys.argv[1:] if argv is None else argv
    _STATE["debug"] = "--debug" in args
    try:
        with _second_interrupt_exits():
            # standalone mode: click prints usage errors itself and exits 2 through SystemExit.
            app(args=args, prog_name="priorscope", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except PriorscopeError as exc:
        if _STATE["debug"]:
            err_console.print_exception()
        text = str(exc)
        if getattr(exc, "resumable", False):
            text += f" The command: {_command(args)}"
        err_console.print(f"[bold red]Error:[/bold red] {text}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except OSError as exc:  # a file the user named cannot be written or read: say which
        if _STATE["debug"]:
            err_console.print_exception()
        err_console.print(f"[bold red]Error:[/bold red] {_os_message(exc)}", highlight=False)
        return 1
    except KeyboardInterrupt:  # a command without its own account of what was kept
        err_console.print(
            f"Interrupted (Ctrl-C). Run the command again for its result: {_command(args)}",
            highlight=False,
            soft_wrap=True,
        )
        return INTERRUPTED
    return 0


def _command(args: list[str]) -> str:
    """Return the command line that ran ``args`` (what to type to run it again)."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    head = (
        ["priorscope"]
        if prog == "priorscope"
        else [Path(sys.executable).name, "-m", "priorscope.cli"]
    )
    if os.environ.get("WORLD_SIZE") and os.environ.get("TORCHELASTIC_RUN_ID"):
        return f"the same torchrun command (each rank runs: {shlex.join([*head, *args])})"
    return shlex.join([*head, *args])


def _quiet_exit(signum: int, frame: object) -> None:
    """End the process at once on a second Ctrl-C: no cleanup, no traceback (atexit skipped)."""
    os.write(
        2,
        b"\nStopped at once (second Ctrl-C). Committed shards are safe; the rest is "
        b"recomputed when the same command runs again.\n",
    )
    os._exit(INTERRUPTED)


@contextmanager
def _second_interrupt_exits() -> Iterator[None]:
    """Let the first Ctrl-C raise KeyboardInterrupt (clean stop, message); make any later one
    end the process quietly, also during interpreter shutdown (torch's atexit hooks)."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler or not _main_thread():
        yield
        return

    def first(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, _quiet_exit)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        # After a Ctrl-C the process is on its way out: the entry point keeps the quiet
        # handler through exit. Called as a function (tests), Python's default comes back.
        stopping = signal.getsignal(signal.SIGINT) is _quiet_exit
        if not (stopping and _STATE.get("entrypoint")):
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _os_message(exc: OSError) -> str:
    """Return the one-paragraph message of a file-system error (path, reason, what to do)."""
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        state = "read-only" if exc.errno == errno.EROFS else "full"
        return (
            f"Expected to write {where}. Got '{reason}' ([Errno {exc.errno}]) instead: the disk "
            f"is {state}. Free space there (or make it writable), or choose another output "
            "path; then run the same command again."
        )
    return (
        f"Expected to read or write {where}. Got '{reason}' instead. Check that its folder "
        "exists (and is not a file), that you may write there, and that the disk has space; "
        "pass --debug for the traceback."
    )


def entrypoint() -> None:
    """Console-script entry point."""
    _STATE["entrypoint"] = True
    code = main()
    if code == INTERRUPTED:
        # Everything kept is on disk; interpreter teardown (torch's atexit hooks) would only
        # offer a later Ctrl-C the chance of a traceback, so leave without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    sys.exit(code)


if __name__ == "__main__":
    entrypoint()
