"""Command-line entry: discovers the command modules of this package and runs typer."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import traceback

from pitr.cli.app import OPTS, app, report_error
from pitr.errors import InternalError, Interrupted, PitrError

_loaded = False


def _load_commands() -> None:
    global _loaded
    if _loaded:
        return
    # Each command module registers itself on `app`; discovering them keeps this
    # file free of a list every feature would have to edit.
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if mod != "app":
            importlib.import_module(f"{__name__}.{mod}")
    _loaded = True


def main(argv: list[str] | None = None) -> int:
    _load_commands()
    try:
        # standalone mode lets typer own usage errors (exit 2), --help and typer.Exit;
        # they all arrive here as SystemExit.
        app(args=argv, prog_name="pitr", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except PitrError as exc:
        if OPTS.debug:
            traceback.print_exc()
        report_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        report_error(Interrupted("interrupted"))
        return Interrupted.exit_code
    except Exception as exc:  # the boundary: anything else is a bug, reported as such
        if OPTS.debug:
            traceback.print_exc()
        err = InternalError(f"unexpected {type(exc).__name__}: {exc}",
                            hint="run again with --debug and report the traceback")
        report_error(err)
        return err.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
