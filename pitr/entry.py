"""Console-script entry point.

Kept free of heavy imports: hot paths PostgreSQL calls once per WAL segment
(archive-push, archive-get) can be answered here before typer, boto3 or
zstandard are imported. Everything else goes to the typer CLI.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from pitr.cli import main as cli_main

    return cli_main(args)
