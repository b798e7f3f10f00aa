"""Gather the inputs of :func:`~pitr.monitor.health.evaluate`: the I/O edge of monitoring.

Reads the catalog (through its local cache, docs/catalog-cache.md), the newest verify
report under ``<stanza>/verify/`` and the agent's ``<spool>/<stanza>/agent-status.json``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from pitr import log
from pitr.catalog import Catalog
from pitr.catalog_cache import CatalogCache, cache_path
from pitr.config import Config
from pitr.errors import PitrError
from pitr.monitor.alerts import safe_url
from pitr.monitor.health import HealthReport, RepositoryState, Thresholds, evaluate
from pitr.repo import Repo
from pitr.storage import ObjectInfo, read_bytes
from pitr.verify_report import DrillReport
from pitr.wal.catchup import Backlog, Lag
from pitr.wal.status import AgentStatus

logger = logging.getLogger("pitr.monitor")


@dataclass(frozen=True)
class Inputs:
    catalog: Catalog
    agent: AgentStatus | None
    last_verify: DrillReport | None
    repositories: tuple[RepositoryState, ...] = ()  # several repositories only


def location(cfg: Config) -> str:
    """The repository as a user recognises it, without credentials."""
    url = safe_url(cfg.repository.url) if "@" in cfg.repository.url else cfg.repository.url
    if cfg.repository.endpoint_url:
        return f"{url} (endpoint {safe_url(cfg.repository.endpoint_url)})"
    return url


def read_agent_status(cfg: Config) -> AgentStatus | None:
    from pitr.wal.spool import Spool

    path = Spool(cfg.archive.spool_dir, cfg.stanza).status_path  # the agent's own spool layout
    try:
        return AgentStatus.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.event(logger, logging.WARNING, "ignoring unreadable agent status", path=str(path),
                  reason=str(exc))
        return None


def read_last_verify(repo: Repo, listed: list[ObjectInfo] | None = None,
                     read: Callable[[str], bytes] | None = None) -> DrillReport | None:
    """``listed``/``read``: the verify reports as the catalog cache listed them, and its
    reader (which reads a report once, not on every refresh)."""
    if listed is None:
        listed = list(repo.storage.list(repo.verify_prefix))
    if read is None:
        def read(key: str) -> bytes:
            return read_bytes(repo.storage, key)
    keys = [o.key for o in listed if o.key.endswith(".json")]
    # Report names are UTC timestamps, so the greatest key is the newest drill; a
    # corrupt newest report falls back to the one before rather than hiding all.
    for key in sorted(keys, reverse=True):
        try:
            return DrillReport.from_json(json.loads(read(key)), key)
        except (ValueError, KeyError, TypeError) as exc:
            log.event(logger, logging.WARNING, "ignoring unreadable verify report", key=key,
                      reason=str(exc))
    return None


def read_catch_up(cfg: Config, now: float | None = None) -> list[Lag]:
    """Each catch_up repository's lag, from its backlog in the local spool (cheap: read
    on every request, like the agent's status)."""
    from pitr.wal.spool import Spool

    base = Spool(cfg.archive.spool_dir, cfg.stanza).base
    at = time.time() if now is None else now
    return [Backlog(base, rc.name).lag(at) for rc in cfg.catch_up_repositories]


def gather(cfg: Config, cache: CatalogCache | None = None, *, use_cache: bool = True) -> Inputs:
    """``cache``: a long-lived one (the server's) keeps its state in memory between
    refreshes; without it the cache file is read (docs/catalog-cache.md).
    ``use_cache=False`` (``pitr status --no-cache``): a full listing, the cache file
    neither read nor written."""
    if not use_cache:
        from pitr.catalog import load_catalog

        repo = Repo.open(cfg)
        catalog = load_catalog(repo)
        return Inputs(catalog, read_agent_status(cfg), read_last_verify(repo),
                      read_repositories(cfg, catalog, use_cache=False))
    if cache is None:
        cache = CatalogCache(Repo.open(cfg), cache_path(cfg))
    catalog = cache.refresh()
    verify = read_last_verify(cache.repo, cache.head_objects(cache.repo.verify_prefix),
                              cache.read)
    return Inputs(catalog, read_agent_status(cfg), verify, read_repositories(cfg, catalog))


def read_repositories(cfg: Config, first: Catalog, *, use_cache: bool = True
                      ) -> tuple[RepositoryState, ...]:
    """With several repositories, each one's catalog (the first's is ``first``), each
    through its own catalog cache: an idle refresh costs each one its two requests
    (docs/catalog-cache.md). With one repository: nothing."""
    from pitr.catalog import load_catalog
    from pitr.catalog_cache import cached_catalog

    if len(cfg.all_repositories) < 2:
        return ()
    out = [RepositoryState(cfg.repository.name, cfg.repository.url, cfg.repository.mode,
                           first)]
    for rc in cfg.repositories:
        one = cfg.for_repository(rc)
        try:
            catalog = cached_catalog(one)[0] if use_cache else load_catalog(Repo.open(one))
            out.append(RepositoryState(rc.name, rc.url, rc.mode, catalog))
        except PitrError as exc:
            out.append(RepositoryState(rc.name, rc.url, rc.mode, None,
                                       " ".join(exc.message.split())))
    return tuple(out)


def report_from(cfg: Config, inputs: Inputs, now: datetime | None = None) -> HealthReport:
    from pitr.wal.modes import current

    agent = inputs.agent
    mode = current(cfg, agent.mode if agent is not None and agent.state != "stopped" else None)
    return evaluate(inputs.catalog, agent, inputs.last_verify,
                    Thresholds.from_config(cfg.monitor), now or datetime.now(UTC),
                    location=location(cfg), retention=asdict(cfg.retention),
                    conditional_writes=cfg.repository.conditional_writes,
                    archive_mode=mode,
                    catch_up=read_catch_up(cfg, now.timestamp() if now else None),
                    repositories=inputs.repositories)


def health_report(cfg: Config, now: datetime | None = None) -> HealthReport:
    return report_from(cfg, gather(cfg), now)


class CachedCollector:
    """Re-reads the repository at most every ``monitor.refresh`` seconds.

    Ages are still computed at request time, so a backup crosses its age
    threshold on time even while the cached catalog is reused. The agent's
    status file is local and cheap: it is read on every request.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._inputs: Inputs | None = None
        self._at = 0.0
        self._cache: CatalogCache | None = None

    def report(self) -> HealthReport:
        with self._lock:
            if self._inputs is None or time.monotonic() - self._at >= self.cfg.monitor.refresh:
                if self._cache is None:
                    self._cache = CatalogCache(
                        Repo.open(self.cfg),
                        cache_path(self.cfg))
                self._inputs = gather(self.cfg, self._cache)
                self._at = time.monotonic()
            inputs = Inputs(self._inputs.catalog, read_agent_status(self.cfg),
                            self._inputs.last_verify)
        return report_from(self.cfg, inputs)
