"""Shared plumbing of the generators that keep docs in step with the code.

Each generator renders text from the code (config schema, exit codes) and
either rewrites its target or, with ``--check``, fails when the committed
file differs, which the unit tests run so docs cannot drift.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- section:{name} -->", f"<!-- /section:{name} -->"


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"markers {begin} ... {end} not found")
    return text[: start + len(begin)] + "\n" + body + text[stop:]


def run(argv: list[str] | None, *, description: str, default_path: Path, option: str,
        transform: Callable[[str], str], what: str, command: str) -> int:
    """CLI of a generator: rewrite ``--<option>`` from ``transform(current)``, or --check it."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    ap.add_argument(f"--{option}", dest="path", type=Path, default=default_path)
    args = ap.parse_args(argv)
    path: Path = args.path
    current = path.read_text() if path.exists() else ""
    wanted = transform(current)
    if args.check:
        if wanted != current:
            print(f"{path}: the {what} is stale; run `{command}`", file=sys.stderr)
            return 1
        return 0
    if wanted != current:
        path.write_text(wanted)
        print(f"{path}: {what} updated")
    return 0
