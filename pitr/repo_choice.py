"""Which repository a restore reads (docs/multiple-repositories.md, "Restoring").

Every configured repository (or the one ``--repo NAME`` names) is read on its own:
its backups, timelines and the WAL of the chosen path. The first repository, in
config order, whose catalog reaches the target is chosen; the others are reported
with why they can or cannot (unreachable, or no plan reaches the target). With one
repository nothing changes: its errors are the command's errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pitr.errors import PitrError, PlanError

if TYPE_CHECKING:
    from pitr.catalog import Catalog
    from pitr.catalog_scope import Scope
    from pitr.config import Config, RepositoryConfig
    from pitr.planner import RestorePlan
    from pitr.repo import Repo
    from pitr.targets import Target


@dataclass
class Candidate:
    """One repository's side of the choice."""

    name: str
    url: str
    repo: Repo | None = None
    # the stanza's listings (backups, timelines; manifests read as a plan needs them),
    # reused by a full-catalog plan; None: the repository did not answer
    scope: Scope | None = None
    plan: RestorePlan | None = None
    error: PitrError | None = None

    def to_json(self, chosen: bool) -> dict[str, Any]:
        if self.plan is not None:
            state = "chosen" if chosen else "can reach the target"
        elif self.scope is None:
            state = "unreachable"
        elif self.error is not None:
            state = "cannot reach the target"
        else:
            state = "not asked"  # the target could not be read (no reachable repository)
        doc: dict[str, Any] = {"name": self.name, "url": self.url, "state": state}
        if self.plan is not None:
            doc["backup"] = self.plan.backup.id
        if self.error is not None:
            doc["error"] = " ".join(self.error.message.split())
        return doc


def open_candidates(cfg: Config, repo_name: str | None) -> list[Candidate]:
    """Each repository with its base catalog, or the error that kept it from one."""
    from pitr.catalog_scope import Scope
    from pitr.repo import Repo

    rcs: list[RepositoryConfig] = ([cfg.repository_named(repo_name)] if repo_name
                                   else list(cfg.all_repositories))
    out = []
    for rc in rcs:
        cand = Candidate(rc.name, rc.url)
        try:
            cand.repo = Repo.open(cfg.for_repository(rc))
            cand.scope = Scope(cand.repo)
        except PitrError as exc:
            if len(rcs) == 1:
                raise
            cand.error = exc
        out.append(cand)
    return out


def first_base(cands: list[Candidate]) -> Catalog:
    """The first reachable repository's base catalog (what a zone-less target is read by)."""
    for c in cands:
        if c.scope is not None:
            return c.scope.base
    raise _none_reachable(cands)


def choose(cands: list[Candidate], target: Target, now: datetime,
           backup_id: str | None,
           plan_one: Callable[[Scope, Target, datetime, str | None], RestorePlan]
           ) -> Candidate:
    """Plan in every reachable repository; the first that reaches the target is chosen."""
    for c in cands:
        if c.scope is None:
            continue
        try:
            c.plan = plan_one(c.scope, target, now, backup_id)
        except PitrError as exc:
            if len(cands) == 1:
                raise
            c.error = exc
    for c in cands:
        if c.plan is not None:
            return c
    if all(c.scope is None for c in cands):
        raise _none_reachable(cands)
    reasons = "; ".join(f"{c.name}: {' '.join(c.error.message.split())}"
                        for c in cands if c.error is not None)
    raise PlanError(f"no repository can reach the target ({reasons})",
                    hint="`pitr plan --json` shows each repository's answer; `pitr list` "
                         "with a config of one repository shows what it holds")


def _none_reachable(cands: list[Candidate]) -> PitrError:
    first = next(c.error for c in cands if c.error is not None)
    first.message = ("no repository is reachable: " + "; ".join(
        f"{c.name}: {' '.join(c.error.message.split())}" for c in cands if c.error))
    return first
