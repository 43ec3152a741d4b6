"""Run data preparation: find the videos, plan the shards, write them as Ray tasks, resume after a kill.

Usage (what the ``data_prep.activitynet`` / ``data_prep.sports1m`` commands do)::

    from data_prep.labels import load_activitynet_json
    from data_prep.runner import prepare
    from data_prep.shards import PrepParams
    source = load_activitynet_json("activity_net.v1-3.min.json", subsets=["training", "validation"])
    summary = prepare(source, "videos/", "shards/", PrepParams(fps=1, short_side=256), num_cpus=8)

One Ray task writes one shard (``num_cpus=1``, one decoder thread) and streams one event per video back, which
drives a tqdm bar of videos done, failures and rate. A local Ray is started (``address="local"``: a cluster that
``ray start`` left on this machine is not joined by accident) unless Ray is already initialised in this process or
``ray_address`` names a cluster (``auto`` for the one on this machine); Ray started here is shut down at the end.

Before anything is written: ``--videos`` and ``--out`` are checked, the videos are matched to files, the shards
planned, and ``--out`` checked for another run's shards (:mod:`data_prep.reuse`); any problem raises
:class:`~data_prep.checks.InputError`, and neither Ray nor a file write has started.

Resume: rerunning the same command into the same folder skips every shard that is complete (see
:mod:`data_prep.shards`), rewrites the rest, and gives the same samples in the same shards. A worker that
crashes (an FFmpeg segfault on a hostile file) is retried; a video that crashes its worker twice is reported and
left out of its shard, the rest of the shard is written.

Output on shared storage (cluster): every worker writes its shards straight into ``--out``, and the driver reads
the ``.state/`` folder there, so ``--out`` must be the same path on every node: an NFS/Lustre/EFS mount, or an
object store mounted with a FUSE driver (s3fs, gcsfuse, blobfuse); or ``--out`` is an object-store prefix
(``s3://bucket/shards/anet``: each task builds its shard on its node and uploads it, :mod:`data_prep.outdir`), e.g.
``python -m data_prep.activitynet ... --out /mnt/shared/anet-shards --ray-address auto``. Readers on the mount see
only whole shards (a rename on NFS is atomic; on object-store FUSE it is a copy of the finished file). The
package must be importable on the workers (install it in the cluster image, or ship it with a ``runtime_env``);
``--videos`` is a folder every node reads (the same mount), or an object-store prefix (``s3://bucket/anet/videos``:
each task copies one video at a time to its node, :mod:`data_prep.sources`). One run at a time per output folder.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from data_prep.checks import InputError, check_out_dir, check_videos_dir
from data_prep.labels import Entry, LabelSource, problem
from data_prep.manifest import write_outputs
from data_prep.outdir import OutDir
from data_prep.reuse import SHARD_NAME, check_reuse, record_run, remove_shards
from data_prep.shards import (
    MAX_CRASHES,
    STATE,
    Job,
    PrepParams,
    ShardPlan,
    crash_suspect,
    plan_shards,
    shard_done,
    state_name,
    video_key,
    write_shard,
)
from data_prep.sources import VideoIndex

log = logging.getLogger(__name__)


def build_jobs(source: LabelSource, index: VideoIndex) -> tuple[list[Job], list[dict[str, str]]]:
    """Match annotations to files; videos without a file, or whose key repeats, are reported.

    Returns:
        ``(jobs, skipped)`` where ``skipped`` holds ``report.json`` entries (with the label problems of the source).
    """
    jobs, skipped, keys = [], list(source.problems), set()
    for entry in source.entries:
        path = index.find(entry)
        key = video_key(entry.id)
        if path is None:
            skipped.append(problem(entry, f"no video file found: no {entry.id}.* or v_{entry.id}.* under {index.root}"))
        elif key in keys:
            skipped.append(problem(entry, f"duplicate key: {key}", path))
        else:
            keys.add(key)
            names = [source.classes[i] for i in entry.labels]
            jobs.append(
                Job(key, entry.id, entry.subset, path, list(entry.labels), names, entry.segments,
                    entry.segment_labels, entry.has_segments, entry.warnings)
            )
    return jobs, skipped


def _remove_stale(out: OutDir, plans: list[ShardPlan]) -> None:
    """Delete temporary files of killed runs, and our shards of these subsets that the plan no longer has."""
    if not out.remote:  # an object store has none: a shard is built in a temporary folder of its node
        for tmp in out.local("").glob(".*-[0-9][0-9][0-9][0-9][0-9][0-9].tar.tmp"):  # ours only: .{shard}.tmp
            tmp.unlink(missing_ok=True)
    planned = {plan.name for plan in plans}
    subsets = {plan.subset for plan in plans}
    for state_file in out.names(STATE, suffix=".tar.json"):
        name = state_file[: -len(".json")]
        match = SHARD_NAME.fullmatch(name)
        if match and match.group(1) in subsets and name not in planned:
            log.info("removing %s: not in the current plan", name)
            out.delete(name)
            out.delete(f"{STATE}/{state_file}")


class _Progress:
    """Counts videos once each (a retried shard reports its videos again) and feeds the bar."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, unit="video", disable=not enabled, dynamic_ncols=True, smoothing=0.1)
        self.seen: set[str] = set()
        self.failed = 0

    def video(self, event: dict) -> None:
        if event["key"] in self.seen:
            return
        self.seen.add(event["key"])
        if not event["ok"]:
            self.failed += 1
            log.info("skipped %s: %s", event["id"], event["reason"])
        self.bar.update(1)
        self.bar.set_postfix(failed=self.failed, refresh=False)


def _run_inline(todo: list[ShardPlan], out: OutDir, params: PrepParams, progress: _Progress) -> list[dict]:
    for plan in todo:
        for event in write_shard(plan, str(out), params):
            if event["type"] == "video":
                progress.video(event)
    return []


def _run_ray(
    todo: list[ShardPlan], out: OutDir, params: PrepParams, progress: _Progress, address: str | None,
    num_cpus: int | None,
) -> list[dict]:
    """Run shard tasks on Ray; returns report entries for shards that failed even after retries."""
    import ray  # imported here: the inline mode and the label tools do not need Ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(write_shard)
        crashes: Counter[str] = Counter()
        excluded: set[str] = set()
        attempts: Counter[str] = Counter()
        failed: list[dict] = []

        def submit(plan: ShardPlan) -> tuple[object, ShardPlan]:
            attempts[plan.name] += 1
            return task.remote(plan, str(out), params, frozenset(excluded)), plan

        running = [submit(plan) for plan in todo]
        while running:
            ready, _ = ray.wait([gen for gen, _ in running], num_returns=1)
            position = next(i for i, (gen, _) in enumerate(running) if gen is ready[0])
            gen, plan = running[position]
            try:
                event = ray.get(next(gen))
            except StopIteration:
                running.pop(position)
                continue
            except ray.exceptions.RayError as error:
                running.pop(position)
                task_error = isinstance(error, ray.exceptions.RayTaskError)  # a Python error, not a dead process
                suspect_key = crash_suspect(out, plan)  # events in flight die with the worker: ask the disk
                suspect = next((job for job in plan.jobs if job.key == suspect_key), None)
                if suspect is not None and not task_error:
                    crashes[suspect.key] += 1
                    if crashes[suspect.key] >= MAX_CRASHES:
                        excluded.add(suspect.key)
                log.warning("shard %s failed (%s) at %s", plan.name, type(error).__name__, suspect and suspect.path)
                # a Python error (disk full, a bug) gets one more try; a dead process, MAX_CRASHES per suspect
                limit = 2 if task_error else len(plan.jobs) * MAX_CRASHES + 1
                if attempts[plan.name] < limit:
                    running.append(submit(plan))
                else:
                    reason = f"shard failed: {plan.name}, {type(error).__name__}"
                    failed += [{"id": j.id, "path": j.path, "subset": j.subset, "reason": reason} for j in plan.jobs]
                continue
            if event["type"] == "video":
                progress.video(event)
        return failed
    finally:
        if started:
            ray.shutdown()


def _write_skipped(
    out: OutDir, kind: str, subsets: list[str], items: list[dict], counts: dict[str, dict] | None = None
) -> None:
    """Record report entries of this run per subset (``.state/{kind}-{subset}.json``, read by write_outputs)."""
    for subset in subsets:
        mine = [item for item in items if item["subset"] == subset]
        record = {"skipped": mine, **(counts or {}).get(subset, {})}
        out.write_text(state_name(f"{kind}-{subset}"), json.dumps(record, ensure_ascii=False))


def presence(source: LabelSource, index: VideoIndex) -> dict[str, dict[str, int]]:
    """Per subset: ``annotated`` (distinct video ids the annotation lists) and ``present`` (of those, with a file)."""
    found: dict[str, dict[str, bool]] = {}
    for entry in source.entries:
        found.setdefault(entry.subset, {})[entry.id] = index.find(entry) is not None
    for item in source.problems:
        entry = Entry(id=item["id"], subset=item["subset"], path=item["path"] or None)
        found.setdefault(entry.subset, {}).setdefault(entry.id, index.find(entry) is not None)
    return {subset: {"annotated": len(ids), "present": sum(ids.values())} for subset, ids in found.items()}


def _nothing_to_write(source: LabelSource, videos_dir: str | Path) -> InputError:
    """The one line for a run in which no video can be written at all."""
    if source.entries:
        example = source.entries[0]
        return InputError(f"--videos {videos_dir}: none of the {len(source.entries)} annotated videos has a file "
                          f"there (e.g. no {example.id}.* or v_{example.id}.* at any depth)")
    if source.problems:
        first = source.problems[0]
        return InputError(f"nothing to write: all {len(source.problems)} annotated videos were refused "
                          f"(e.g. {first['id']!r}: {first['reason']})")
    return InputError("nothing to write: the annotations list no video of the chosen subsets")


def prepare(
    source: LabelSource,
    videos_dir: str | Path,
    out_dir: str | Path,
    params: PrepParams | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
    use_ray: bool = True,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write the shards of a label source (resuming whatever an earlier run into ``out_dir`` finished).

    Args:
        source: Classes and videos (see :mod:`data_prep.labels`).
        videos_dir: Folder searched for the video files (any depth).
        out_dir: Output folder; created if missing.
        params: Sampling and sharding parameters (default :class:`PrepParams`).
        ray_address: Ray cluster to use (``auto``, ``ray://host:10001``); None starts a local Ray.
        num_cpus: CPUs of the local Ray (None: all).
        use_ray: False writes the shards one by one in this process (debugging).
        progress: Show the tqdm bar.
        overwrite: Allow replacing shards of another run (other parameters, classes, annotations, videos).

    Returns:
        Summary: the report's counts plus ``out``, ``seconds``, ``processed`` (videos decoded in this run) and
        ``failed_shards``.

    Raises:
        InputError: ``videos_dir`` or ``out_dir`` unusable, no video with a file, or ``out_dir`` holding another
            run's shards (without ``overwrite``); raised before anything is written.
    """
    params = params or PrepParams()
    start = time.monotonic()
    out = OutDir(out_dir)
    check_videos_dir(videos_dir)
    check_out_dir(out.root)
    index = VideoIndex(videos_dir)
    jobs, skipped = build_jobs(source, index)
    if not jobs:
        raise _nothing_to_write(source, videos_dir)
    plans = plan_shards(jobs, params.shard_size)
    run = {"dataset": source.dataset, "classes": source.classes, "params": params.identity()}
    removals = check_reuse(out, run, plans, overwrite)  # the last check: nothing is written before it
    out.prepare()
    remove_shards(out, removals)
    record_run(out, run, plans)
    subsets = sorted({e.subset for e in source.entries} | {p["subset"] for p in skipped})
    _write_skipped(out, "skipped", subsets, skipped, presence(source, index))
    _remove_stale(out, plans)
    todo = [plan for plan in plans if not shard_done(out, plan, params)]
    total = sum(len(plan.jobs) for plan in todo)
    log.info("%d videos in %d shards; %d shards to write (%d videos), %d not found or not labelled",
             len(jobs), len(plans), len(todo), total, len(skipped))
    bar = _Progress(total, progress)
    try:
        if use_ray and todo:
            failed = _run_ray(todo, out, params, bar, ray_address, num_cpus)
        else:
            failed = _run_inline(todo, out, params, bar)
    finally:
        bar.bar.close()
    _write_skipped(out, "failed", subsets, failed)  # a later run of these subsets retries those shards
    counts = write_outputs(out)
    seconds = time.monotonic() - start
    return {**counts, "out": str(out), "seconds": round(seconds, 2), "processed": total,
            "failed_shards": len({item["reason"] for item in failed})}


def iter_summary_lines(summary: dict) -> Iterator[str]:
    """Human lines for the CLI's final summary."""
    yield (f"{summary['written']} videos in {summary['shards']} shards in {summary['out']}; "
           f"{summary['skipped']} skipped, {summary['warnings']} warnings (report.json)")
    if summary["skipped_by_reason"]:
        yield "skipped: " + ", ".join(f"{reason} x{n}" for reason, n in summary["skipped_by_reason"].items())
    rate = summary["processed"] / summary["seconds"] if summary["seconds"] else 0.0
    yield f"{summary['processed']} videos decoded in this run in {summary['seconds']:.1f}s ({rate:.2f} videos/s)"
