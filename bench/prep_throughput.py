"""Data preparation throughput: data_prep (Ray tasks writing shards) vs an ffmpeg frame dump of the same videos.

Usage::

    apt-get install -y ffmpeg                      # the baseline only; data_prep itself never needs it
    taskset -c 0 .venv/bin/python bench/prep_throughput.py [--synthetic 16] [--size 480x360] [--repeat 2]
    .venv/bin/python bench/prep_throughput.py --cores 2 --json bench/prep_throughput.json

The videos: ``--synthetic`` H.264 videos from :mod:`data_prep.synthetic` (360p, 10-20 s, 25 fps, a keyframe every
2 s, like web video) plus the real clips in ``../shared/videos``. Every method gets the same videos and the same
number of cores (``--cores``, default: the CPUs this process may run on, so ``taskset -c 0`` measures one core):

- ``data_prep (Ray)``: :func:`data_prep.runner.prepare` on a local Ray with ``num_cpus=cores``, 1 fps, short side
  256, JPEG quality 90, about four shards (tasks) per core; Ray's start-up (with its workers' first imports) is
  timed apart and not counted: a real run lasts hours.
- ``data_prep (in process)``: the same work without Ray (one process), to show Ray's overhead.
- ``ffmpeg video_jpg``: the official layout, every frame at native fps into ``image_%05d.jpg`` (the paper's
  code extracts every frame), short side 256, ``-threads 1``, ``cores`` processes at a time.
- ``ffmpeg 1 fps``: the same frames we keep (``-vf fps=1,scale``), still one ffmpeg process per video.

Figures: videos/s and videos/s per core, frames and bytes written, best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"
SCALE = "scale='if(lt(iw,ih),256,-2)':'if(lt(iw,ih),-2,256)'"  # short side 256, like --short-side 256


def make_videos(folder: Path, count: int, size: tuple[int, int]) -> tuple[Path, list[Path]]:
    """Synthetic videos plus links to the shared clips, and an ActivityNet JSON naming them all."""
    from data_prep.synthetic import generate

    annotation = generate(folder, videos=count, classes=4, seed=0, duration=(10.0, 20.0), size=size, fps=25)
    data = json.loads(annotation.read_text())
    label = data["taxonomy"][1]["nodeName"]
    for clip in sorted(SHARED_VIDEOS.glob("*.mp4")):
        os.symlink(clip, folder / "videos" / clip.name)
        annotations = [{"segment": [0.0, 1.0], "label": label}]
        data["database"][clip.stem] = {"subset": "training", "duration": 0, "resolution": "", "url": "",
                                       "annotations": annotations}
    annotation.write_text(json.dumps(data))
    return annotation, sorted((folder / "videos").iterdir())


def folder_size(folder: Path) -> tuple[int, int]:
    """(JPEG files, bytes) under a folder (a shard folder counts its tar bytes and frames from sizes of members)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.suffix == ".jpg" for p in files), sum(p.stat().st_size for p in files)


def run_ffmpeg(videos: list[Path], out: Path, cores: int, sample_fps: bool) -> float:
    """Dump frames of every video with one single-threaded ffmpeg per video, ``cores`` at a time; seconds."""
    def one(video: Path) -> None:
        target = out / video.stem
        target.mkdir(parents=True)
        vf = f"fps=1,{SCALE}" if sample_fps else SCALE
        command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", str(video),
                   "-filter_threads", "1", "-vf", vf, "-q:v", "3", str(target / "image_%05d.jpg")]
        subprocess.run(command, check=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(cores) as pool:
        list(pool.map(one, videos))
    return time.perf_counter() - start


def run_prep(annotation: Path, out: Path, cores: int, use_ray: bool) -> tuple[float, int]:
    """data_prep over the annotation; (seconds, frames written)."""
    from data_prep.labels import load_activitynet_json
    from data_prep.runner import prepare
    from data_prep.shards import PrepParams

    source = load_activitynet_json(annotation, subsets=["training", "validation"])
    shard_size = max(1, len(source.entries) // (4 * cores))  # enough shards (tasks) to keep every core busy
    start = time.perf_counter()
    summary = prepare(source, annotation.parent / "videos", out, PrepParams(shard_size=shard_size), num_cpus=cores,
                      use_ray=use_ray, progress=False)
    seconds = time.perf_counter() - start
    assert summary["skipped"] == 0, summary
    frames = 0
    for state in (out / ".state").glob("*.tar.json"):
        frames += sum(sample["frames"] for sample in json.loads(state.read_text())["written"])
    return seconds, frames


def _import_decoder() -> None:
    import data_prep.shards  # noqa: F401 - PyAV, Pillow and numpy, what a shard task loads first


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", type=int, default=16, help="synthetic videos (plus the shared clips)")
    parser.add_argument("--size", default="480x360", help="synthetic video size WxH")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), help="cores for every method")
    parser.add_argument("--repeat", type=int, default=2, help="runs per method; the best counts")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if shutil.which("ffmpeg") is None:
        sys.exit("ffmpeg is not on PATH (apt-get install -y ffmpeg): it is the baseline")
    work = Path(tempfile.mkdtemp(prefix="prep_bench_"))
    try:
        width, height = (int(x) for x in args.size.split("x"))
        annotation, videos = make_videos(work / "data", args.synthetic, (width, height))
        import ray

        start = time.perf_counter()
        ray.init(address="local", num_cpus=args.cores, include_dashboard=False, logging_level=logging.WARNING)
        warm = ray.remote(num_cpus=1)(_import_decoder)  # worker processes start and import once, as in a long run
        ray.get([warm.remote() for _ in range(args.cores)])
        ray_start = time.perf_counter() - start
        rows = []
        methods = [
            ("data_prep (Ray)", lambda out: run_prep(annotation, out, args.cores, True)),
            ("data_prep (in process)", lambda out: run_prep(annotation, out, 1, False)),
            ("ffmpeg video_jpg (all frames)", lambda out: (run_ffmpeg(videos, out, args.cores, False), None)),
            ("ffmpeg 1 fps", lambda out: (run_ffmpeg(videos, out, args.cores, True), None)),
        ]
        for name, method in methods:
            best = None
            for attempt in range(args.repeat):
                out = work / f"out-{len(rows)}-{attempt}"
                seconds, frames = method(out)
                jpegs, size = folder_size(out)
                if best is None or seconds < best[0]:
                    best = (seconds, frames if frames is not None else jpegs, size)
                shutil.rmtree(out)
            cores = 1 if "in process" in name else args.cores
            seconds, frames, size = best
            rows.append({"method": name, "videos": len(videos), "cores": cores, "seconds": round(seconds, 3),
                         "videos_per_s": round(len(videos) / seconds, 3),
                         "videos_per_s_per_core": round(len(videos) / seconds / cores, 3),
                         "frames": frames, "mbytes": round(size / 1e6, 2)})
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(videos)} videos ({args.synthetic} synthetic {args.size} 10-20 s + {len(videos) - args.synthetic} "
          f"shared clips), {args.cores} core(s); Ray start-up {ray_start:.1f}s not counted")
    print("| method | cores | seconds | videos/s | videos/s/core | frames written | MB |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['cores']} | {row['seconds']} | {row['videos_per_s']} | "
              f"{row['videos_per_s_per_core']} | {row['frames']} | {row['mbytes']} |")
    ours = rows[0]["videos_per_s_per_core"]
    ratios = {row["method"]: round(ours / row["videos_per_s_per_core"], 2) for row in rows[2:]}
    print("data_prep (Ray) per core / ffmpeg per core: " + ", ".join(f"{k}: {v}x" for k, v in ratios.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "ray_start_s": round(ray_start, 2)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
