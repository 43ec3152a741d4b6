"""Whose shards are in ``--out``: resume the same run, refuse another one, replace it only with ``--overwrite``.

Usage (what :func:`data_prep.runner.prepare` does before it writes anything)::

    from data_prep.reuse import check_reuse, record_run
    removals = check_reuse(out, run, plans, overwrite=False)   # InputError if out holds another run's shards
    ... remove `removals` (only with overwrite), then record_run(out, run, plans) and write the shards

A run is identified by ``.state/run.json`` (dataset, classes, the sample-deciding parameters) and, per subset, by
``.state/plan-{subset}.json``: the SHA-256 of its plan, i.e. which videos go to which shard with which labels and
segments. The same command again (a resume after a kill, a retry of failed shards) has the same identity and
keeps every finished shard. Anything else that would rewrite or delete shards already there (other parameters,
classes, annotations, another set of video files, or shards in the folder that no recorded run made) is refused
with one line that names ``--out`` and what differs, unless ``overwrite``; then the shards concerned are deleted,
with a WARNING that says how many. Runs of other subsets into the same folder (same parameters and classes) add
up, as before. Files that data_prep did not name as its own are never deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re

from data_prep.checks import InputError
from data_prep.outdir import OutDir
from data_prep.shards import STATE, ShardPlan, state_name

log = logging.getLogger(__name__)

SHARD_NAME = re.compile(r"(.+)-\d{6}\.tar")


def plan_digest(plans: list[ShardPlan]) -> str:
    """SHA-256 of what the plans of one subset write: shard names, and per video its key, id and annotation."""
    content = [
        [plan.name, [[job.key, job.id, job.labels, job.label_names, job.segments, job.segment_labels,
                      job.has_segments] for job in plan.jobs]]
        for plan in plans
    ]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()


def _by_subset(plans: list[ShardPlan]) -> dict[str, list[ShardPlan]]:
    grouped: dict[str, list[ShardPlan]] = {}
    for plan in plans:
        grouped.setdefault(plan.subset, []).append(plan)
    return grouped


def _recorded_shards(out: OutDir) -> dict[str, list[str]]:
    """Shard names per subset that earlier runs recorded in ``.state`` (finished shards)."""
    found: dict[str, list[str]] = {}
    for state_file in out.names(STATE, suffix=".tar.json"):
        name = state_file[: -len(".json")]
        match = SHARD_NAME.fullmatch(name)
        if match:
            found.setdefault(match.group(1), []).append(name)
    return found


def _run_difference(old: dict, run: dict) -> str:
    if old.get("dataset") != run["dataset"]:
        return f"dataset {old.get('dataset')} -> {run['dataset']}"
    if old.get("classes") != run["classes"]:
        return f"other classes ({len(old.get('classes') or [])} -> {len(run['classes'])})"
    changed = [f"{key} {old.get('params', {}).get(key)!r} -> {value!r}" for key, value in run["params"].items()
               if (old.get("params") or {}).get(key) != value]
    return "other parameters: " + ", ".join(changed or ["format"])


def check_reuse(out: OutDir, run: dict, plans: list[ShardPlan], overwrite: bool) -> list[str]:
    """Refuse to mix runs in ``out``; returns the shard names an ``overwrite`` must delete first (else none).

    Args:
        out: The output folder (may not exist yet).
        run: ``{"dataset", "classes", "params"}`` of this run.
        plans: This run's shard plans.
        overwrite: Replace another run's shards instead of refusing.

    Raises:
        InputError: ``--out DIR: holds shards of another run (...)``, without ``overwrite``.
    """
    recorded = _recorded_shards(out)
    known = {name for names in recorded.values() for name in names}
    old = out.read_json(state_name("run"))
    reasons: list[str] = []
    remove: set[str] = set()
    if old is not None and old != run:
        reasons.append(_run_difference(old, run))
        remove.update(known)
    for subset, mine in _by_subset(plans).items():
        previous = (out.read_json(state_name(f"plan-{subset}")) or {}).get("digest")
        if previous == plan_digest(mine):
            continue  # the same run again: resume (a shard renamed but not yet recorded is rewritten)
        if recorded.get(subset):
            reasons.append(f"other videos or annotations in {subset}" if previous else
                           f"{subset} shards that no recorded plan made")
            remove.update(recorded[subset])
        foreign = [plan.name for plan in mine if plan.name not in known and out.exists(plan.name)]
        if foreign:
            reasons.append(f"{foreign[0]}" + (f" and {len(foreign) - 1} more" if len(foreign) > 1 else "")
                           + " not made by data_prep")
            remove.update(foreign)
    if not reasons:
        return []
    if not overwrite:
        raise InputError(f"--out {out}: holds shards of another run ({'; '.join(reasons)}): "
                         "use a new --out, or --overwrite to replace them")
    log.warning("--overwrite: deleting %d shards of another run in %s (%s)", len(remove), out, "; ".join(reasons))
    return sorted(remove)


def remove_shards(out: OutDir, names: list[str]) -> None:
    """Delete shards, their state and the bookkeeping of their subsets (what :func:`check_reuse` returned)."""
    subsets = set()
    for name in names:
        out.delete(name)
        out.delete(state_name(name))
        match = SHARD_NAME.fullmatch(name)
        if match:
            subsets.add(match.group(1))
    for subset in subsets:
        for kind in ("plan", "skipped", "failed"):
            out.delete(state_name(f"{kind}-{subset}"))


def record_run(out: OutDir, run: dict, plans: list[ShardPlan]) -> None:
    """Write ``.state/run.json`` and each subset's ``plan-{subset}.json`` before the first shard."""
    out.write_text(state_name("run"), json.dumps(run, ensure_ascii=False))
    for subset, mine in _by_subset(plans).items():
        record = {"digest": plan_digest(mine), "shards": [plan.name for plan in mine],
                  "videos": sum(len(plan.jobs) for plan in mine)}
        out.write_text(state_name(f"plan-{subset}"), json.dumps(record))
