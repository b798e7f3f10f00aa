"""`pitr lifecycle`: the S3 lifecycle rules the retention policy implies (docs/storage-tiers.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from pitr.cli.app import JsonFlag, app, examples, load_config, print_json

if TYPE_CHECKING:
    from pitr.config import Config
    from pitr.tiers import LifecyclePlan


@app.command("lifecycle", epilog=examples(
    "pitr lifecycle            # print the rules", "pitr lifecycle --json",
    "pitr lifecycle --apply    # write them into the bucket, keeping its other rules"))
def lifecycle(
    apply: Annotated[bool, typer.Option(
        "--apply", help="write the rules into the bucket (PutBucketLifecycleConfiguration), "
                        "replacing only pitr's rules for this stanza")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Print (or --apply) the bucket lifecycle rules that follow from [retention]."""
    cfg = load_config(command="lifecycle")
    bucket, plan = lifecycle_plan(cfg)
    doc: dict[str, Any] = {"stanza": cfg.stanza, "bucket": bucket, **plan.to_json()}
    if apply:
        doc.update(_apply(cfg, plan))
    if json_out:
        print_json(doc)
        return
    echo = typer.echo
    echo(f"Lifecycle rules for stanza {cfg.stanza!r} in bucket {bucket} (IDs {plan.id_prefix}*):")
    for rule in plan.rules:
        echo(f"  {rule['ID']}")
        echo(f"    filter      {_filter_text(rule['Filter'])}")
        if "AbortIncompleteMultipartUpload" in rule:
            days = rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]
            echo(f"    action      abort multipart uploads unfinished after {days} day(s)")
        for t in rule.get("Transitions", ()):
            echo(f"    action      move to {t['StorageClass']} after {t['Days']} day(s)")
    for note in plan.notes:
        echo(f"  note: {note}")
    if apply:
        echo(f"{'applied' if doc['changed'] else 'already in place'}; "
             f"{doc['other_rules']} other rule(s) of the bucket kept unchanged")
    else:
        echo("(not applied: run with --apply)")


def lifecycle_plan(cfg: Config) -> tuple[str, LifecyclePlan]:
    """The bucket and the rules for ``cfg``'s stanza (a pure function of the config)."""
    from pitr.errors import UsageError
    from pitr.retention import Policy
    from pitr.storage.s3 import parse_url
    from pitr.tiers import lifecycle_rules

    if not cfg.repository.url.startswith("s3://"):
        raise UsageError(f"repository.url {cfg.repository.url!r} is not an S3 bucket: "
                         "lifecycle rules and storage classes are S3 features")
    bucket, prefix = parse_url(cfg.repository.url)
    return bucket, lifecycle_rules(f"{prefix}{cfg.stanza}/", cfg.repository,
                                   Policy.from_config(cfg.retention))


def _apply(cfg: Config, plan: LifecyclePlan) -> dict[str, Any]:
    from pitr.errors import StorageError
    from pitr.storage import open_storage
    from pitr.storage.base import TieredStorage
    from pitr.tiers import merge_rules

    storage = open_storage(cfg.repository)
    if not isinstance(storage, TieredStorage):  # pragma: no cover - lifecycle_plan checked
        raise StorageError(f"{storage.url}: no lifecycle rules on this storage")
    existing = storage.get_lifecycle()
    merged = merge_rules(existing, plan)
    changed = merged != existing
    if changed:
        storage.put_lifecycle(merged)
    return {"applied": True, "changed": changed,
            "other_rules": len(merged) - len(plan.rules)}


def _filter_text(f: dict[str, Any]) -> str:
    inner = f.get("And", f)
    parts = [f"prefix {inner['Prefix']}"] if "Prefix" in inner else []
    parts += [f"tag {t['Key']}={t['Value']}" for t in inner.get("Tags", ())]
    return ", ".join(parts)
