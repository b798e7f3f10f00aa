"""SIGTERM and SIGINT become :class:`~pitr.errors.Interrupted` (exit 17): the one helper.

A command that must clean up when stopped (systemd's stop, a timeout, Ctrl-C) runs
inside :func:`signals_interrupt`: the first signal raises Interrupted where the main
thread is, so ``finally`` blocks and cleanup run. Later signals are ignored (logged),
and so are signals inside :func:`signals_ignored`, so nothing cuts a cleanup short.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from pitr.errors import Interrupted

log = logging.getLogger("pitr")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_quiet = False  # set while cleaning up, and after the first signal: cleanup must finish


@contextlib.contextmanager
def signals_interrupt(message: str) -> Iterator[None]:
    """Within: the first SIGTERM/SIGINT raises ``Interrupted(message)``; ``{signal}`` in
    ``message`` names it. Outside the main thread (tests run commands from threads)
    nothing changes: only the main thread may set handlers."""
    global _quiet

    def handler(signum: int, _frame: FrameType | None) -> None:
        global _quiet
        name = signal.Signals(signum).name
        if _quiet:
            log.warning("%s ignored: cleaning up", name)
            return
        _quiet = True
        raise Interrupted(message.format(signal=name))

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _quiet = False
    old = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _quiet = False


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """A cleanup no signal may cut short (inside :func:`signals_interrupt`)."""
    global _quiet
    before = _quiet
    _quiet = True
    try:
        yield
    finally:
        _quiet = before
