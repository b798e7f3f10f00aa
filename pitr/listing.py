"""What `pitr list` shows: backups, WAL per timeline, gaps, the recovery window.

:func:`report` turns a :class:`~pitr.catalog.Catalog` into the JSON document
(``schema_version`` 1, documented in docs/backups.md); :func:`render`
prints the same facts for people. The recovery window is :mod:`pitr.window`'s,
the one every other reader uses too. Pure: no I/O, time is not read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pitr.catalog import Catalog, WalRange, backup_restorable
from pitr.chains import Chain, chains
from pitr.manifest import BackupRecord
from pitr.pg.names import format_lsn, segment_name, segno_to_lsn
from pitr.progress import human_bytes
from pitr.window import WindowEdge, recovery_window

SCHEMA_VERSION = 1


# -- JSON ---------------------------------------------------------------------------

def _backup_doc(cat: Catalog, b: BackupRecord,
                chain: Chain) -> dict[str, Any]:
    return {
        "id": b.id,
        "label": b.label,
        "start_time": b.start_time.isoformat(),
        "stop_time": b.stop_time.isoformat(),
        "start_lsn": format_lsn(b.start_lsn),
        "stop_lsn": format_lsn(b.stop_lsn),
        "timeline": b.timeline,
        "pg_version": b.pg_version,
        "db_size": b.db_size,
        "raw_bytes": b.raw_bytes,
        "stored_bytes": b.stored_bytes,
        "compression_ratio": round(b.compression_ratio, 2),
        "pinned": b.pinned,
        "wal_complete": backup_restorable(cat, b),
        # docs/incremental-backups.md: an incremental names its parent; "chain" lists the
        # backups a restore combines, full backup first, this one last
        "type": "incremental" if b.parent else "full",
        "parent": b.parent,
        "chain": list(chain.ids),
        "chain_whole": chain.whole,
        "chain_problem": chain.problem,
    }


def _range_doc(cat: Catalog, r: WalRange) -> dict[str, Any]:
    size = cat.segment_size
    return {
        "first": segment_name(r.timeline, r.first, size),
        "last": segment_name(r.timeline, r.last, size),
        "segments": r.count,
        "start_lsn": format_lsn(segno_to_lsn(r.first, size)),
        "end_lsn": format_lsn(segno_to_lsn(r.last + 1, size)),
        "stored_bytes": r.stored_bytes,
        "first_archived_at": r.first_archived_at.isoformat(),
        "last_archived_at": r.last_archived_at.isoformat(),
    }


def _edge_doc(e: WindowEdge) -> dict[str, Any]:
    return {"time": e.time.isoformat(), "lsn": format_lsn(e.lsn), "timeline": e.timeline,
            "backup_id": e.backup_id}


def report(cat: Catalog) -> dict[str, Any]:
    size = cat.segment_size
    timelines = []
    for tli in sorted(set(cat.segments) | set(cat.timelines)):
        t = cat.timelines.get(tli)
        timelines.append({
            "timeline": tli,
            "parent": t.parent if t else None,
            "branch_lsn": format_lsn(t.branch_lsn) if t and t.branch_lsn is not None else None,
            "ranges": [_range_doc(cat, r) for r in cat.ranges(tli)],
            "gaps": [{"first": segment_name(g.timeline, g.first, size),
                      "last": segment_name(g.timeline, g.last, size),
                      "segments": g.last - g.first + 1} for g in cat.gaps(tli)],
        })
    window = recovery_window(cat)
    every = chains(cat.backups, cat)
    return {
        "schema_version": SCHEMA_VERSION,
        "stanza": cat.stanza,
        "system_id": cat.system_id,
        "backups": [_backup_doc(cat, b, every[b.id]) for b in cat.backups],
        "wal": timelines,
        "recovery_window": None if window is None else {
            "earliest": _edge_doc(window.earliest), "latest": _edge_doc(window.latest)},
        "incomplete_backups": list(cat.incomplete_backups),
        "damaged_backups": list(cat.damaged_backups),
    }


# -- text ---------------------------------------------------------------------------

def _type(b: dict[str, Any]) -> str:
    chain = b.get("chain") or [b["id"]]
    return "full" if b.get("type", "full") == "full" else f"incr {len(chain) - 1}"


def _chain_lines(backups: list[dict[str, Any]]) -> list[str]:
    """One line per chain that has incrementals: its backups, full backup first."""
    tips = [b for b in backups if b.get("type") == "incremental"
            and not any(o.get("parent") == b["id"] for o in backups)]
    out = []
    for b in tips:
        stored = sum(o["stored_bytes"] for o in backups if o["id"] in b["chain"])
        state = "" if b["chain_whole"] else f"  BROKEN: {b['chain_problem']}"
        out.append(f"chain {' <- '.join(b['chain'])} ({human_bytes(stored)} stored){state}")
    return ["", *out] if out else []


def _t(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%SZ")


def render(doc: dict[str, Any]) -> str:
    lines = [f"stanza {doc['stanza']} (system identifier {doc['system_id'] or 'unknown'})", ""]
    if doc["backups"]:
        head = ("BACKUP", "TYPE", "LABEL", "STOP TIME (UTC)", "START LSN", "STOP LSN", "TLI",
                "RAW", "STORED", "RATIO", "PIN")
        rows = [head] + [(
            b["id"], _type(b), b["label"], _t(b["stop_time"]), b["start_lsn"], b["stop_lsn"],
            str(b["timeline"]), human_bytes(b["raw_bytes"]), human_bytes(b["stored_bytes"]),
            f"{b['compression_ratio']:.1f}x", "yes" if b["pinned"] else "",
        ) + (() if b["wal_complete"] else ("WAL missing",))
          + (() if b.get("chain_whole", True) else ("CHAIN BROKEN",)) for b in doc["backups"]]
        widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(head))]
        lines += ["  ".join(c.ljust(widths[i]) if i < len(widths) else c
                            for i, c in enumerate(r)).rstrip() for r in rows]
        lines += _chain_lines(doc["backups"])
    else:
        lines.append("no completed backups")
    lines.append("")
    if not doc["wal"]:
        lines.append("no archived WAL")
    for t in doc["wal"]:
        origin = (f" (from timeline {t['parent']} at {t['branch_lsn']})"
                  if t["parent"] is not None else "")
        lines.append(f"WAL timeline {t['timeline']}{origin}:")
        for r in t["ranges"]:
            lines.append(f"  {r['first']} .. {r['last']}  {r['segments']} segments, "
                         f"{human_bytes(r['stored_bytes'])}, archived {_t(r['first_archived_at'])}"
                         f" .. {_t(r['last_archived_at'])}")
        for g in t["gaps"]:
            lines.append(f"  GAP {g['first']} .. {g['last']} ({g['segments']} segments missing)")
    lines.append("")
    w = doc["recovery_window"]
    if w is None:
        lines.append("recovery window: none (no backup with its WAL archived)")
    else:
        e, la = w["earliest"], w["latest"]
        lines.append(f"recovery window: {_t(e['time'])} (backup {e['backup_id']}) .. "
                     f"{_t(la['time'])} (LSN {la['lsn']}, timeline {la['timeline']})")
    if doc["incomplete_backups"]:
        lines.append(f"incomplete backups (no manifest): {', '.join(doc['incomplete_backups'])}")
    if doc["damaged_backups"]:
        lines.append(f"damaged backups (unreadable manifest): "
                     f"{', '.join(doc['damaged_backups'])}")
    return "\n".join(lines)
