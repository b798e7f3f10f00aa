"""Which config file a command reads: ``--config``, else ``$PITR_CONFIG``, else the default.

The one rule for the CLI, the fast paths (``os`` only: they import this module),
``pitr setup`` and ``pitr restore`` (the file PostgreSQL's archive/restore_command
will name).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_CONFIG_PATH = "/etc/pitr/pitr.toml"


def config_file(explicit: str | None, env: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(path, named): named is true when ``--config`` or ``$PITR_CONFIG`` chose the file
    (it must then exist); false for the default path (absent means defaults only)."""
    env = os.environ if env is None else env
    if explicit:
        return explicit, True
    named = env.get("PITR_CONFIG")
    if named:
        return named, True
    return DEFAULT_CONFIG_PATH, False
