"""WebDataset shards: deterministic plan, atomic writing, resume state, and the files beside the shards.

Usage::

    from data_prep.shards import Job, PrepParams, plan_shards, write_shard
    plans = plan_shards(jobs, shard_size=64)            # same jobs -> same shards, always
    for event in write_shard(plans[0], out_dir, PrepParams()):   # the body of one Ray task
        ...
    # then data_prep.manifest.write_outputs(out_dir): sizes.json, manifest.json, report.json

Layout of ``out_dir``::

    training-000000.tar ...   one sample per video: {key}.json, {key}.0000.jpg, {key}.0001.jpg, ...
    sizes.json, manifest.json, report.json   written by data_prep.manifest from the state below
    .state/                   resume bookkeeping: run.json, plan-{subset}.json, {shard}.json per finished shard
                              (its videos, parameters, sha256, decoder versions), skipped-/failed-{subset}.json

A shard is written to ``.{name}.tmp`` and renamed when complete (in an object store: built in a temporary folder of
the node and uploaded, :mod:`data_prep.outdir`); only then is its ``.state/{name}.json`` written, so a shard counts
as done only if both exist and the state lists the same videos with the same parameters.
Videos go to shards by the SHA-1 of their key (a stable pseudo-random order that mixes classes), chunked by
``shard_size`` per subset.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from data_prep.checks import InputError, check_number
from data_prep.decode import SHORT_POLICIES, SampledVideo, VideoError, decoder_versions, sample_video
from data_prep.outdir import STATE, OutDir, sha256_of
from data_prep.sources import local_video
from sofnet.storage import StorageError

log = logging.getLogger(__name__)

MAX_CRASHES = 2  # a video that kills its worker this many times is left out of its shard


NATIVE_FPS = "native"  # --fps native: every frame at the video's own rate, as the official SoF-Net frames
MAX_FPS = 1000.0  # above any real frame rate: more only repeats frames and fills memory


@dataclass(frozen=True)
class PrepParams:
    """How videos become samples; checked when made (:class:`InputError` naming the flag), stored in the manifest.

    A resumed run must use the same values, except ``decode_timeout``, which changes no sample
    (:meth:`identity`).
    """

    fps: float | str = 1.0
    min_frames: int = 16
    short: str = "dense"
    short_side: int = 256
    quality: int = 90
    shard_size: int = 64
    seek_gap: float = 8.0
    decode_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.fps != NATIVE_FPS:
            check_number("--fps", self.fps, low=0.0, high=MAX_FPS, low_open=True)
        for flag, value, low, high in (("--min-frames", self.min_frames, 1, 100_000),
                                       ("--short-side", self.short_side, 0, 16_384),
                                       ("--quality", self.quality, 1, 100),
                                       ("--shard-size", self.shard_size, 1, 1_000_000)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{flag}: must be a whole number, got {value!r}")
            check_number(flag, value, low=low, high=high)
        if self.short not in SHORT_POLICIES:
            raise InputError(f"--short: must be one of {', '.join(SHORT_POLICIES)}, got {self.short!r}")
        check_number("--seek-gap", self.seek_gap, low=0.0)
        check_number("--decode-timeout", self.decode_timeout, low=0.0, low_open=True)
        for name in ("fps", "seek_gap", "decode_timeout"):  # 2 and 2.0 are one setting: one run identity
            value = getattr(self, name)
            if not isinstance(value, str):
                object.__setattr__(self, name, float(value))

    def identity(self) -> dict:
        """The parameters that decide the samples: what run.json, shard states and the manifest record."""
        options = asdict(self)
        del options["decode_timeout"]
        return options

    def sampling(self) -> dict:
        """The keyword arguments of :func:`data_prep.decode.sample_video`."""
        options = asdict(self)
        del options["shard_size"]
        options["timeout"] = options.pop("decode_timeout")
        return options


@dataclass
class Job:
    """One video to write: its annotation and the file found for it."""

    key: str
    id: str
    subset: str
    path: str
    labels: list[int] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)
    segments: list[list[float]] = field(default_factory=list)
    segment_labels: list[int] = field(default_factory=list)
    has_segments: bool = False
    warnings: list[str] = field(default_factory=list)


@dataclass
class ShardPlan:
    """The videos of one shard, in write order."""

    subset: str
    index: int
    jobs: list[Job]

    @property
    def name(self) -> str:
        """File name, ``{subset}-{index:06d}.tar``."""
        return shard_name(self.subset, self.index)


def video_key(video_id: str) -> str:
    """Sample key: the id with ``.``, ``/`` and ``\\`` replaced by ``_`` (WebDataset splits fields at a dot)."""
    return video_id.replace(".", "_").replace("/", "_").replace("\\", "_")


def shard_name(subset: str, index: int) -> str:
    """``training``, 3 -> ``training-000003.tar``."""
    return f"{subset}-{index:06d}.tar"


def plan_shards(jobs: list[Job], shard_size: int) -> list[ShardPlan]:
    """Assign videos to shards: per subset, sorted by SHA-1 of the key, in chunks of ``shard_size``.

    Args:
        jobs: Videos with files; keys must be unique.
        shard_size: Videos per shard (the last shard of a subset may have fewer).

    Returns:
        Shard plans, subsets in sorted order, indices from 0 without gaps.
    """
    by_subset: dict[str, list[Job]] = {}
    for job in jobs:
        by_subset.setdefault(job.subset, []).append(job)
    plans = []
    for subset in sorted(by_subset):
        ordered = sorted(by_subset[subset], key=lambda job: hashlib.sha1(job.key.encode()).hexdigest())
        for index, start in enumerate(range(0, len(ordered), shard_size)):
            plans.append(ShardPlan(subset, index, ordered[start : start + shard_size]))
    return plans


def inside_flags(timestamps: list[float], segments: list[list[float]]) -> list[int]:
    """1 for each timestamp inside any ``[start, end]`` segment (ends included), else 0."""
    return [int(any(start <= t <= end for start, end in segments)) for t in timestamps]


def sample_record(job: Job, video: SampledVideo) -> dict:
    """The ``{key}.json`` of a sample (the shard format's metadata)."""
    segments, segment_labels = job.segments, job.segment_labels
    if not job.has_segments and job.labels:  # a list without times: the whole video is the action
        segments, segment_labels = [[0.0, round(video.duration, 4)]], [job.labels[0]]
    return {
        "id": job.id,
        "key": job.key,
        "subset": job.subset,
        "labels": job.labels,
        "label_names": job.label_names,
        "segments": segments,
        "segment_labels": segment_labels,
        "duration": round(video.duration, 4),
        "fps": round(video.fps, 4),
        "timestamps": video.timestamps,
        "inside": inside_flags(video.timestamps, segments),
        "num_frames": len(video.jpegs),
        "source": job.path,
        "width": video.width,
        "height": video.height,
    }


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444  # fixed headers: reruns write the same bytes
    tar.addfile(info, _Reader(data))


class _Reader:
    """Minimal file object over bytes for ``tarfile.addfile`` (avoids a BytesIO copy per frame)."""

    def __init__(self, data: bytes) -> None:
        self.view, self.pos = memoryview(data), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size < 0 else self.pos + size
        chunk, self.pos = self.view[self.pos : end], min(end, len(self.view))
        return bytes(chunk)


def state_name(name: str) -> str:
    """The relative name of the state of shard ``name`` (or of another bookkeeping file) in the output folder."""
    return f"{STATE}/{name}.json"


def crash_suspect(out_dir: str | Path | OutDir, plan: ShardPlan) -> str | None:
    """Key of the video a shard task was decoding when its process died (None if it was not decoding)."""
    return OutDir(out_dir).read_text(state_name(f"{plan.name}.current")) or None


def shard_done(out_dir: str | Path | OutDir, plan: ShardPlan, params: PrepParams) -> bool:
    """The shard file exists and its state lists exactly the planned videos, written with ``params``."""
    out = OutDir(out_dir)
    state = out.read_json(state_name(plan.name))
    return (
        state is not None
        and out.exists(plan.name)
        and state.get("keys") == [job.key for job in plan.jobs]
        and state.get("params") == params.identity()
    )


def worker_node() -> str:
    """The host a shard is written on: its Ray node IP in a Ray task, else the host name (``--no-ray``)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return socket.gethostname()


def write_shard(
    plan: ShardPlan, out_dir: str | Path, params: PrepParams, exclude: frozenset[str] = frozenset()
) -> Iterator[dict]:
    """Write one shard; yields one event per video, then one for the shard (the body of a Ray task).

    The environment variable ``DATA_PREP_CRASH_KEY`` is a fault-injection hook for the tests: the process is
    killed (SIGKILL, like an FFmpeg segfault) when it reaches the video with that key.

    Args:
        plan: The videos of the shard.
        out_dir: Output folder (shared storage on a cluster).
        params: Sampling and encoding parameters.
        exclude: Keys of videos not to decode (they crashed workers before); reported as skipped.

    Yields:
        ``{"type": "video", "key", "id", "ok", "reason" or "warnings"}`` per video, in plan order, then
        ``{"type": "shard", "name", "samples"}`` after the shard was renamed into place.
    """
    out = OutDir(out_dir)
    state_file = state_name(plan.name)
    out.delete(state_file)  # from here until the shard is in place the old shard (if any) counts as not done
    current = state_name(f"{plan.name}.current")  # the video being decoded: the suspect if the worker dies
    written: list[dict] = []
    skipped: list[dict] = []
    warnings: list[dict] = []
    start = time.monotonic()
    with out.staging(plan.name) as tmp:
        with open(tmp, "wb") as handle:
            with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for job in plan.jobs:
                    event: dict = {"type": "video", "key": job.key, "id": job.id}
                    out.write_text(current, job.key, durable=False)
                    try:
                        if job.key in exclude:
                            raise VideoError(f"worker crashed: decoding killed the worker process {MAX_CRASHES} "
                                             "times")
                        if os.environ.get("DATA_PREP_CRASH_KEY") == job.key:
                            os.kill(os.getpid(), signal.SIGKILL)
                        with local_video(job.path, params.decode_timeout) as path:
                            video = sample_video(path, **params.sampling())
                        record = sample_record(job, video)
                    except VideoError as error:
                        reason = str(error)
                    except StorageError:  # the bucket, not the video: the shard fails and a rerun writes it
                        raise
                    except Exception as error:  # noqa: BLE001 - a bug or an FFmpeg surprise must not lose the shard
                        log.exception("unexpected error on %s", job.path)
                        reason = f"unexpected error: {type(error).__name__}: {error}"
                    else:
                        _add(tar, f"{job.key}.json", json.dumps(record, ensure_ascii=False).encode())
                        for i, jpeg in enumerate(video.jpegs):
                            _add(tar, f"{job.key}.{i:04d}.jpg", jpeg)
                        notes = job.warnings + video.warnings
                        written.append({"key": job.key, "id": job.id, "labels": record["label_names"],
                                        "frames": len(video.jpegs)})
                        warnings.extend({"id": job.id, "path": job.path, "warning": note} for note in notes)
                        yield {**event, "ok": True, "warnings": notes}
                        continue
                    skipped.append({"id": job.id, "path": job.path, "subset": job.subset, "reason": reason})
                    yield {**event, "ok": False, "reason": reason}
            out.delete(current)  # no video to blame for what may fail from here on
            handle.flush()
            os.fsync(handle.fileno())
        with open(tmp, "rb") as handle:  # read back (page cache): the bytes readers will get
            sha256 = sha256_of(handle)
        out.publish(tmp, plan.name)
    state = {
        "name": plan.name,
        "subset": plan.subset,
        "keys": [job.key for job in plan.jobs],
        "params": params.identity(),
        "sha256": sha256,
        "decoder": decoder_versions(),  # of this worker: on a cluster the driver's may differ
        "node": worker_node(),  # which host wrote it (report.json's "nodes")
        "written": written,
        "skipped": skipped,
        "warnings": warnings,
        "seconds": round(time.monotonic() - start, 3),
    }
    out.write_text(state_file, json.dumps(state, ensure_ascii=False))
    yield {"type": "shard", "name": plan.name, "samples": len(written)}
