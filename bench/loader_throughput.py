"""Loader throughput: clips/s from our WebDataset shards vs a loader over the official JPEG-folder layout.

Builds the same JPEG frames twice in ``--workdir`` (reused when the parameters match): the official layout,
a folder per video with ``image_00001.jpg...`` plus a list ``id,num_frames,label``, and our shards
(``training-000000.tar``... with ``sizes.json`` and ``manifest.json``, the data_prep contract). The frames
are real: windows of the clips in ``../shared/videos`` resized to ``--short-side``. With
``--official-short-side`` (e.g. 360, the official ffmpeg script's 360p) the official layout is written a second
time, ``frames_{side}/``, from the same source frames resized to that short side (upscaled where a clip is
smaller, as a scale filter to 360p would), so the official loader decodes JPEGs of the size the official
pipeline stores; its crop is relative to the image's short side and is resized to the same ``--input-size``,
so every loader yields ``[B, T, 3, S, S]``. The default is ``--short-side``: both layouts hold the same files.
Then it times three loaders, with the same TSN sampling and augmentation (``--mode train``: random frame per segment,
multi-scale crop, flip; ``--mode eval``: centre frames, resize + centre crop), batch size and workers:

- ``shards``: ``sofnet.data`` (``make_train_loader`` / ``make_eval_loader``);
- ``folders_official``: the official code path ported faithfully (TSN ``TSNDataSet`` and ``transforms.py``:
  one ``Image.open(...).convert('RGB')`` per frame file, ``GroupMultiScaleCrop`` crop then resize,
  ``GroupRandomHorizontalFlip``, ``Stack``, ``ToTorchFormatTensor``, ``GroupNormalize``, default collate);
- ``folders_our_decode``: the folder layout at ``--short-side`` (always the frames the shards hold) read with
  our decode path (``sofnet.data.ClipTransform``), to separate the storage layout from the decode and tensor code.

Each loader runs ``--epochs`` epochs per repeat (workers start each epoch, as in training), repeats
interleaved; the figure is the median over repeats of clips / wall seconds. ``--cold`` evicts the files of
the layout being read from the page cache (``posix_fadvise DONTNEED``) before each epoch. Because wall-clock
figures swing on a shared machine, it also reports each loader's CPU milliseconds per clip with the loading
in the main process (no workers, best of the repeats), the cost that bounds throughput on dedicated cores.

    python bench/loader_throughput.py --videos 40 --frames 60 --batch-size 8 --workers 2 --json
    python bench/loader_throughput.py --official-short-side 360 --workdir /tmp/sofnet-loader-bench-360
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import av
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as tv

from sofnet.data import (DEFAULT_SCALES, IMAGENET_MEAN, IMAGENET_STD, ClipTransform, make_eval_loader,
                         make_train_loader, sample_crop, segment_indices)

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"
CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_distorted.mp4")
NUM_CLASSES = 10
log = logging.getLogger("loader_throughput")


# ------------------------------------------------------------------------------------------------- the data
def clip_jpegs(path: Path, short_sides: tuple[int, ...], quality: int) -> dict[int, list[bytes]]:
    """Every frame of a real clip, resized to each of ``short_sides``, as JPEG bytes.

    Args:
        path: The video file.
        short_sides: The short sides to write; each frame is decoded once and resized from the source.
        quality: JPEG quality.

    Returns:
        Per short side, the frames' JPEG bytes in display order.
    """
    out: dict[int, list[bytes]] = {side: [] for side in short_sides}
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            img = frame.to_image()
            if not any(out.values()) and any(side > min(img.size) for side in short_sides):
                log.info("%s is %dx%d: upscaled to short side %s", path.name, *img.size,
                         [side for side in short_sides if side > min(img.size)])
            for side in short_sides:
                scale = side / min(img.size)
                resized = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
                buf = io.BytesIO()
                resized.save(buf, format="JPEG", quality=quality)
                out[side].append(buf.getvalue())
    return out


def write_folder(root: Path, vid: str, jpegs: list[bytes]) -> None:
    """One video in the official layout: ``{root}/{vid}/image_00001.jpg...``."""
    (root / vid).mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(jpegs):
        (root / vid / f"image_{i + 1:05d}.jpg").write_bytes(data)


def build(workdir: Path, args: argparse.Namespace) -> tuple[Path, Path, Path, Path]:
    """Write (or reuse) the folder layouts, their list and the shards of the same frames.

    Args:
        workdir: Where to write; reused when ``built.json`` records the same parameters.
        args: The command line.

    Returns:
        ``(folders, official, list_file, shards)``: the folders at ``--short-side``, the official layout's
        folders (the same path unless ``--official-short-side`` differs), the list and the shard directory.
    """
    params = {k: getattr(args, k) for k in ("videos", "frames", "short_side", "official_short_side", "quality",
                                            "shard_size")}
    folders, list_file, shards = workdir / "frames", workdir / "train_list.txt", workdir / "shards"
    side, official_side = args.short_side, args.official_short_side
    official = folders if official_side == side else workdir / f"frames_{official_side}"
    stamp = workdir / "built.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return folders, official, list_file, shards
    log.info("building %d videos x %d frames in %s", args.videos, args.frames, workdir)
    sources = [clip_jpegs(SHARED_VIDEOS / name, tuple({side, official_side}), args.quality) for name in CLIPS]
    shards.mkdir(parents=True, exist_ok=True)
    lines, sizes, names, sink = [], {}, [], None
    for v in range(args.videos):
        src = sources[v % len(sources)]
        start = (v * 13) % len(src[side])
        frame_ids = [(start + i) % len(src[side]) for i in range(args.frames)]
        jpegs = [src[side][k] for k in frame_ids]
        vid, label = f"bench_{v:04d}", v % NUM_CLASSES
        write_folder(folders, vid, jpegs)
        if official != folders:
            write_folder(official, vid, [src[official_side][k] for k in frame_ids])
        lines.append(f"{vid},{args.frames},{label}")
        if v % args.shard_size == 0:
            if sink is not None:
                sink.close()
            names.append(f"training-{len(names):06d}.tar")
            sink = wds.TarWriter(str(shards / names[-1]), mtime=0)  # fixed mtime, as data_prep writes
            sizes[names[-1]] = 0
        width, height = Image.open(io.BytesIO(jpegs[0])).size
        meta = {"id": vid, "key": vid, "subset": "training", "labels": [label], "label_names": [f"class {label}"],
                "segments": [[0.0, args.frames / 25]], "segment_labels": [label], "duration": args.frames / 25,
                "fps": 25.0, "timestamps": [i / 25 for i in range(args.frames)], "inside": [1] * args.frames,
                "num_frames": args.frames, "source": CLIPS[v % len(CLIPS)], "width": width, "height": height}
        sink.write({"__key__": vid, "json": json.dumps(meta).encode(),
                    **{f"{i:04d}.jpg": data for i, data in enumerate(jpegs)}})
        sizes[names[-1]] += 1
    sink.close()
    list_file.write_text("\n".join(lines) + "\n")
    (shards / "sizes.json").write_text(json.dumps(sizes))
    (shards / "manifest.json").write_text(json.dumps({
        "dataset": "bench", "classes": [f"class {c}" for c in range(NUM_CLASSES)],
        "subsets": {"training": {"videos": args.videos, "shards": names, "per_class": {}}}, "params": params}))
    (shards / "report.json").write_text(json.dumps({"written": args.videos, "failed": []}))
    stamp.write_text(json.dumps(params))
    return folders, official, list_file, shards


# -------------------------------------------------------------------- the official code path, ported faithfully
def official_train_transform(images: list[Image.Image], size: int, scales: tuple[float, ...]) -> torch.Tensor:
    """GroupMultiScaleCrop + GroupRandomHorizontalFlip + Stack + ToTorchFormatTensor + GroupNormalize."""
    x, y, cw, ch = sample_crop(images[0].width, images[0].height, size, scales, random)  # type: ignore[arg-type]
    images = [img.crop((x, y, x + cw, y + ch)) for img in images]
    images = [img.resize((size, size), Image.Resampling.BILINEAR) for img in images]
    if random.random() < 0.5:
        images = [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for img in images]
    return official_to_tensor(images)


def official_eval_transform(images: list[Image.Image], size: int, resize: int) -> torch.Tensor:
    """GroupScale (torchvision Resize) + GroupCenterCrop + Stack + ToTorchFormatTensor + GroupNormalize."""
    scale, crop = tv.Resize(resize, interpolation=tv.InterpolationMode.BILINEAR), tv.CenterCrop(size)
    return official_to_tensor([crop(scale(img)) for img in images])


def official_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    pic = np.concatenate([np.array(img) for img in images], axis=2)  # Stack(roll=False): [H, W, 3T]
    tensor = torch.from_numpy(pic).permute(2, 0, 1).contiguous().float().div(255)  # ToTorchFormatTensor
    mean, std = list(IMAGENET_MEAN) * (tensor.size(0) // 3), list(IMAGENET_STD) * (tensor.size(0) // 3)
    for t, m, s in zip(tensor, mean, std):  # GroupNormalize
        t.sub_(m).div_(s)
    return tensor


class FolderDataset(Dataset):
    """TSNDataSet over ``id,num_frames,label`` and ``{root}/{id}/image_{k:05d}.jpg``."""

    def __init__(self, root: Path, list_file: Path, segments: int, train: bool, load: Callable[..., torch.Tensor]):
        self.root, self.segments, self.train, self.load = root, segments, train, load
        self.records = [(v, int(n), int(label)) for v, n, label in
                        (line.split(",")[:3] for line in list_file.read_text().splitlines() if line)]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        vid, n, label = self.records[index]
        indices = segment_indices(n, self.segments, random if self.train else None)  # type: ignore[arg-type]
        paths = [self.root / vid / f"image_{k + 1:05d}.jpg" for k in indices]
        return self.load(paths), label


def official_loader(paths: list[Path], args: argparse.Namespace) -> torch.Tensor:
    images = [Image.open(p).convert("RGB") for p in paths]
    if args.mode == "train":
        return official_train_transform(images, args.input_size, DEFAULT_SCALES)
    return official_eval_transform(images, args.input_size, args.resize)


class OurDecode:
    """Folder files read as bytes, decoded by ``sofnet.data.ClipTransform``: only the storage layout differs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.train, self.transform = args.mode == "train", ClipTransform(args.input_size, resize=args.resize)

    def __call__(self, paths: list[Path]) -> torch.Tensor:
        return self.transform([p.read_bytes() for p in paths], random if self.train else None)  # type: ignore


# --------------------------------------------------------------------------------------------- measuring
def evict(files: Iterable[Path]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def make_loaders(folders: Path, official: Path, list_file: Path, shards: Path, args: argparse.Namespace
                 ) -> dict[str, Callable[[int], Iterable[Any]]]:
    common = dict(num_segments=args.segments, input_size=args.input_size, batch_size=args.batch_size,
                  num_workers=args.workers, num_classes=NUM_CLASSES)
    train = args.mode == "train"

    def ours(epoch: int) -> Iterable[Any]:
        if train:
            return make_train_loader(shards, epoch=epoch, **common)[0]
        return make_eval_loader(shards, subset="training", resize=args.resize, **common)

    def folder(root: Path, load: Callable[..., torch.Tensor]) -> Callable[[int], Iterable[Any]]:
        dataset = FolderDataset(root, list_file, args.segments, train, load)
        return lambda epoch: DataLoader(dataset, batch_size=args.batch_size, shuffle=train, drop_last=train,
                                        num_workers=args.workers)

    return {"shards": ours, "folders_official": folder(official, lambda p: official_loader(p, args)),
            "folders_our_decode": folder(folders, OurDecode(args))}


def clips_of(batch: Any, args: argparse.Namespace) -> int:
    frames = batch["frames"] if isinstance(batch, dict) else batch[0].view(-1, args.segments, 3, args.input_size,
                                                                             args.input_size)
    assert frames.shape[1:] == (args.segments, 3, args.input_size, args.input_size), frames.shape
    return frames.shape[0]


def run(name: str, make: Callable[[int], Iterable[Any]], files: list[Path], args: argparse.Namespace) -> dict:
    clips, seconds, steady_clips, steady_seconds = 0, 0.0, 0, 0.0
    for epoch in range(args.epochs):
        if args.cold:
            evict(files)
        start = time.perf_counter()
        first = None
        for batch in make(epoch):
            n = clips_of(batch, args)
            clips += n
            if first is None:
                first = time.perf_counter()
            else:
                steady_clips += n
        end = time.perf_counter()
        seconds += end - start
        steady_seconds += end - (first or end)
    if not clips:
        raise RuntimeError(f"loader {name} yielded no clip in {args.epochs} epochs: nothing to time")
    return {"clips": clips, "seconds": seconds, "clips_per_s": clips / seconds,
            # one batch per epoch has no steady state: nan, not 0
            "steady_clips_per_s": steady_clips / steady_seconds if steady_clips and steady_seconds else float("nan")}


def cpu_cost(layouts: tuple[Path, Path, Path, Path], args: argparse.Namespace) -> dict[str, float]:
    """CPU milliseconds per clip with the loading in this process (no workers): insensitive to other load."""
    single = argparse.Namespace(**{**vars(args), "workers": 0})
    costs: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, make in make_loaders(*layouts, single).items():
            start, clips = time.process_time(), sum(clips_of(batch, args) for batch in make(0))
            if not clips:
                raise RuntimeError(f"loader {name} yielded no clip: nothing to time")
            costs.setdefault(name, []).append((time.process_time() - start) * 1e3 / clips)
    return {name: min(c) for name, c in costs.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=40)
    p.add_argument("--frames", type=int, default=60, help="stored frames per video")
    p.add_argument("--short-side", type=int, default=256, help="short side of the frames in the shards")
    p.add_argument("--official-short-side", type=int, default=None,
                   help="short side of the official layout's frames (default: --short-side; 360 as shipped)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored frames")
    p.add_argument("--shard-size", type=int, default=10, help="videos per shard")
    p.add_argument("--mode", choices=("train", "eval"), default="train")
    p.add_argument("--segments", type=int, default=16)
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--resize", type=int, default=256, help="eval: short side before the centre crop")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="epochs per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cold", action="store_true", help="evict the layout's files from the page cache each epoch")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/sofnet-loader-bench"))
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    for name in ("videos", "frames", "batch_size", "segments", "epochs", "repeats", "shard_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.mode == "train" and args.videos < args.batch_size:
        # The folder loaders drop a partial batch (drop_last, as the official TSN loader trains) and would time
        # nothing (a division by zero), while ours repeats videos to fill its one batch: no comparison to make.
        p.error(f"--videos {args.videos} < --batch-size {args.batch_size}: in train mode every loader must get at "
                f"least one full batch; give at least {args.batch_size} videos (or use --mode eval)")
    args.official_short_side = args.official_short_side or args.short_side
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    layouts = build(args.workdir, args)
    folders, official, _, shards = layouts
    files = {"shards": sorted(shards.glob("*.tar")), "folders_official": sorted(official.rglob("*.jpg")),
             "folders_our_decode": sorted(folders.rglob("*.jpg"))}
    loaders = make_loaders(*layouts, args)
    runs: dict[str, list[dict]] = {name: [] for name in loaders}
    for _ in range(args.repeats):
        for name, make in loaders.items():
            runs[name].append(run(name, make, files[name], args))
            log.info("%-20s %6.1f clips/s", name, runs[name][-1]["clips_per_s"])
    results = {name: {"clips_per_s": statistics.median(r["clips_per_s"] for r in rs),
                      "steady_clips_per_s": statistics.median(r["steady_clips_per_s"] for r in rs),
                      "runs": [round(r["clips_per_s"], 2) for r in rs]} for name, rs in runs.items()}
    cpu = cpu_cost(layouts, args)
    for name, ms in cpu.items():
        results[name]["cpu_ms_per_clip"] = ms
    shard = results["shards"]["clips_per_s"]
    out = {"params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
           "machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                       "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
           "bytes": {k: sum(f.stat().st_size for f in v) for k, v in files.items()},
           "files": {k: len(v) for k, v in files.items()},
           "frame_sizes": {k: sorted({Image.open(f).size for f in v[::args.frames]})  # first frame per video
                           for k, v in files.items() if k != "shards"}, "results": results,
           "ratio_vs_official": shard / results["folders_official"]["clips_per_s"],
           "ratio_vs_folders_our_decode": shard / results["folders_our_decode"]["clips_per_s"],
           "cpu_ratio_vs_official": cpu["folders_official"] / cpu["shards"],
           "cpu_ratio_vs_folders_our_decode": cpu["folders_our_decode"] / cpu["shards"]}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.mode}, {args.videos} videos x {args.frames} frames, T={args.segments}, batch {args.batch_size}, "
              f"{args.workers} workers{', cold cache' if args.cold else ''}; frames: ours short side "
              f"{args.short_side}, official {args.official_short_side} ({out['bytes']['folders_official'] / 1e6:.1f} "
              f"MB vs {out['bytes']['folders_our_decode'] / 1e6:.1f} MB)")
        for name, r in results.items():
            print(f"  {name:20s} {r['clips_per_s']:7.1f} clips/s  (steady {r['steady_clips_per_s']:.1f})  "
                  f"{r['cpu_ms_per_clip']:.1f} CPU ms/clip")
        print(f"  shards / official: {out['ratio_vs_official']:.2f}x (CPU {out['cpu_ratio_vs_official']:.2f}x)   "
              f"shards / folders with our decode: {out['ratio_vs_folders_our_decode']:.2f}x "
              f"(CPU {out['cpu_ratio_vs_folders_our_decode']:.2f}x)")
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
