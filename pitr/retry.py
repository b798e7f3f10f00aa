"""Retry transient repository errors inside one total time budget.

PostgreSQL calls archive_command/restore_command one file at a time and waits,
so an operation must neither give up at the first network hiccup nor hang
forever: we retry :class:`TransientStorageError` with exponential backoff and
full jitter (so several pushers hitting one recovering server spread out), and
no attempt *starts* once the next sleep would cross the budget. The caller
still pays for the last attempt itself; drivers bound that with their own
request timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pitr.errors import TransientStorageError

T = TypeVar("T")
log = logging.getLogger("pitr.retry")

FIRST_WAIT = 0.25  # seconds: scale of the first backoff
MAX_WAIT = 8.0  # seconds: no single sleep longer than this


def call_with_budget(fn: Callable[[], T], *, budget: float, what: str,
                     first_wait: float = FIRST_WAIT, max_wait: float = MAX_WAIT) -> T:
    """Call ``fn`` until it succeeds, retrying TransientStorageError for ``budget`` seconds.

    Other exceptions pass through at once. When the budget is spent, raises
    TransientStorageError naming ``what``, the attempts and the elapsed time.
    A budget <= 0 means exactly one attempt.
    """
    import tenacity

    start = time.monotonic()

    def out_of_time(state: tenacity.RetryCallState) -> bool:
        # tenacity computes the upcoming sleep before asking whether to stop, so
        # we never sleep into (or start an attempt after) the end of the budget.
        return time.monotonic() - start + (state.upcoming_sleep or 0.0) >= budget

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("%s: attempt %d failed (%s); retrying in %.1fs", what,
                    state.attempt_number, exc, state.upcoming_sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientStorageError),
        wait=tenacity.wait_random_exponential(multiplier=first_wait, max=max_wait),
        stop=out_of_time,
        before_sleep=before_sleep,
        reraise=True,
        sleep=time.sleep,
    )
    try:
        return retrying(fn)
    except TransientStorageError as exc:
        elapsed = time.monotonic() - start
        attempts = retrying.statistics.get("attempt_number", 1)
        raise TransientStorageError(
            f"{what}: gave up after {elapsed:.1f}s and {attempts} attempt(s) "
            f"(budget {budget:g}s): {exc.message}",
            hint=exc.hint or "the repository is unreachable or failing; check the "
                             "endpoint and credentials, or raise repository.timeout",
        ) from exc
