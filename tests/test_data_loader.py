"""The streaming loader over real WebDataset shards with real JPEGs, read by real DataLoader workers.

The shards follow the data_prep contract: ``{subset}-{index:06d}.tar`` with ``{key}.json`` and
``{key}.{i:04d}.jpg`` per video, plus ``sizes.json`` and ``manifest.json``. Each frame encodes what the tests
check: red = 20 + 4 * frame index (uniform), green = a left-to-right ramp, blue = a top-to-bottom ramp, so
a decoded output tells which stored frame it came from and which crop and flip it got.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from sofnet.data import (IMAGENET_MEAN, IMAGENET_STD, DataError, gather_eval, make_eval_loader, make_train_loader,
                         merge_eval_parts, resolve_shards, segment_indices)

H, W = 40, 56  # stored frames: short side 40
T, S, K = 8, 32, 5  # segments, input size, classes


def frame_jpeg(index: int) -> bytes:
    x = np.linspace(0, 255, W)[None, :].repeat(H, 0)
    y = np.linspace(0, 255, H)[:, None].repeat(W, 1)
    red = np.full((H, W), 20 + 4 * index)
    img = np.stack([red, x, y], -1).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


FRAMES = [frame_jpeg(i) for i in range(50)]


def video(vid: int, n: int, subset: str) -> dict:
    """One sample in the shard contract; labels: primary vid % K, a second one for even ids."""
    vid_id = f"v.{vid:03d}"  # a '.' in the id: the key replaces it with '_'
    key = vid_id.replace(".", "_")
    labels = [vid % K] + ([(vid + 1) % K] if vid % 2 == 0 else []) if subset != "testing" else []
    meta = {"id": vid_id, "key": key, "subset": subset, "labels": labels,
            "label_names": [f"class {c}" for c in labels], "segments": [[n / 6, n / 3]],
            "segment_labels": labels[:1], "duration": n / 2, "fps": 25.0,
            "timestamps": [0.5 * i + 0.25 for i in range(n)],
            "inside": [int(n // 3 <= i < 2 * n // 3) for i in range(n)],
            "num_frames": n, "source": f"/videos/{vid_id}.mp4", "width": W, "height": H}
    sample = {"__key__": key, "json": json.dumps(meta).encode()}
    sample.update({f"{i:04d}.jpg": FRAMES[i] for i in range(n)})
    return sample


def write_shards(root: Path, subset: str, counts: Sequence[int], lengths: Optional[Sequence[int]] = None,
                 corrupt: dict[int, str] | None = None) -> list[str]:
    """Shards of ``counts[s]`` videos each; ``corrupt`` maps a video number to 'jpeg' or 'frame' damage."""
    root.mkdir(parents=True, exist_ok=True)
    names, vid = [], 0
    sizes = json.loads((root / "sizes.json").read_text()) if (root / "sizes.json").exists() else {}
    for s, count in enumerate(counts):
        name = f"{subset}-{s:06d}.tar"
        with wds.TarWriter(str(root / name)) as sink:
            for _ in range(count):
                n = lengths[vid % len(lengths)] if lengths else 12 + (vid * 7) % 30
                sample = video(vid, n, subset)
                if (corrupt or {}).get(vid) == "jpeg":
                    sample.update({f"{i:04d}.jpg": b"this is not a JPEG" for i in range(n)})
                elif (corrupt or {}).get(vid) == "frame":
                    del sample[f"{n - 1:04d}.jpg"]
                sink.write(sample)
                vid += 1
        names.append(name)
        sizes[name] = count
    (root / "sizes.json").write_text(json.dumps(sizes))
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {
        "dataset": "test", "classes": [f"class {c}" for c in range(K)], "subsets": {}, "params": {}}
    manifest["subsets"][subset] = {"videos": sum(counts), "shards": names, "per_class": {}}
    manifest_path.write_text(json.dumps(manifest))
    return [str(root / n) for n in names]


UNEVEN = [7, 3, 6, 1, 5]  # 22 videos


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_shards(root, "training", UNEVEN)
    write_shards(root, "validation", UNEVEN)
    return root


def train_loader(root: Path, **kw):
    args = dict(num_segments=T, input_size=S, batch_size=2, num_workers=2, num_classes=K, seed=3, shuffle_buffer=4)
    args.update(kw)
    return make_train_loader(root, **args)


def eval_loader(root: Path, **kw):
    args = dict(num_segments=T, input_size=S, resize=36, batch_size=3, num_workers=2, num_classes=K)
    args.update(kw)
    return make_eval_loader(root, **args)


def pixels(frames: torch.Tensor) -> torch.Tensor:
    """Undo the normalization: values 0..255, [..., 3, H, W]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (frames * std + mean) * 255


# ---------------------------------------------------------------------------------------------- split properties
def test_eval_sees_every_video_exactly_once_over_ranks_and_workers(shard_dir: Path) -> None:
    seen: list[str] = []
    per_rank = []
    for rank in range(3):
        loader = eval_loader(shard_dir, rank=rank, world_size=3)
        ids = [i for batch in loader for i in batch["id"]]
        assert all(len(batch["id"]) <= 3 for batch in loader)
        per_rank.append(len(ids))
        seen += ids
    assert Counter(seen) == Counter(f"v.{v:03d}" for v in range(sum(UNEVEN)))
    # Whole shards per rank (0,3 | 1,4 | 2): uneven counts, nothing padded or dropped.
    assert per_rank == [7 + 1, 3 + 5, 6]
    assert loader.dataset.num_videos == sum(UNEVEN)


@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (2, 3), (4, 1)])
def test_eval_exactly_once_for_other_splits(shard_dir: Path, world_size: int, num_workers: int) -> None:
    seen = [i for rank in range(world_size)
            for batch in eval_loader(shard_dir, rank=rank, world_size=world_size, num_workers=num_workers)
            for i in batch["id"]]
    assert sorted(seen) == [f"v.{v:03d}" for v in range(sum(UNEVEN))]


def train_epoch(root: Path, rank: int, world_size: int, epoch: int, **kw) -> tuple[int, list[list[str]]]:
    loader, steps = train_loader(root, rank=rank, world_size=world_size, epoch=epoch, **kw)
    assert len(loader) == steps
    return steps, [batch["id"] for batch in loader]


def test_train_gives_every_rank_the_same_batches_and_each_video_at_most_once(shard_dir: Path) -> None:
    total, world, batch = sum(UNEVEN), 3, 2
    epochs = []
    for epoch in range(2):
        ids = []
        for rank in range(world):
            steps, batches = train_epoch(shard_dir, rank, world, epoch)
            assert steps == total // (world * batch) == 3
            assert len(batches) == steps and all(len(b) == batch for b in batches)
            ids += [i for b in batches for i in b]
        assert len(ids) == len(set(ids)) == 18  # within an epoch no video twice; 22 - 18 < world * batch left
        epochs.append(ids)
    assert epochs[0] != epochs[1]  # a new shard permutation and shuffle each epoch


def test_train_is_reproducible_and_worker_count_does_not_change_the_batch_count(shard_dir: Path) -> None:
    a = train_epoch(shard_dir, 1, 3, epoch=5)
    assert a == train_epoch(shard_dir, 1, 3, epoch=5)
    for workers in (0, 1, 3, 4):  # 4 workers > 3 batches: one worker yields none
        steps, batches = train_epoch(shard_dir, 1, 3, epoch=5, num_workers=workers)
        assert len(batches) == steps == 3


def test_train_with_fewer_videos_than_a_global_batch_still_yields_one_batch(tmp_path: Path) -> None:
    write_shards(tmp_path, "training", [2, 1])
    for rank in range(2):
        steps, batches = train_epoch(tmp_path, rank, 2, epoch=0, batch_size=4)
        assert steps == 1 and [len(b) for b in batches] == [4]


def test_set_epoch_changes_the_next_iteration(shard_dir: Path) -> None:
    loader, _ = train_loader(shard_dir, num_workers=1)
    first = [b["id"] for b in loader]
    loader.dataset.set_epoch(1)
    assert [b["id"] for b in loader] != first


# ------------------------------------------------------------------------------------------- content of a batch
def test_batch_layout_dtypes_and_normalisation(shard_dir: Path) -> None:
    batch = next(iter(eval_loader(shard_dir, num_workers=1)))
    assert set(batch) == {"frames", "labels", "label", "id", "inside", "timestamps", "frame_index"}
    assert batch["frames"].shape == (3, T, 3, S, S) and batch["frames"].dtype == torch.float32
    assert batch["labels"].shape == (3, K) and batch["labels"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64 and batch["inside"].dtype == torch.bool
    assert batch["timestamps"].dtype == torch.float32 and batch["frame_index"].shape == (3, T)
    assert batch["id"] == ["v.000", "v.001", "v.002"]
    # v.000: labels 0 and 1 (primary 0); v.001: label 1 only.
    assert batch["labels"][0].tolist() == [1, 1, 0, 0, 0] and batch["labels"][1].tolist() == [0, 1, 0, 0, 0]
    assert batch["label"].tolist() == [0, 1, 2]
    px = pixels(batch["frames"])
    assert px.min() > -3 and px.max() < 258  # ImageNet mean/std undone: back to 0..255
    # Red channel = 20 + 4 * stored frame: the decoded frames are exactly the chosen ones, in order.
    decoded = ((px[:, :, 0].mean((-1, -2)) - 20) / 4).round().long()
    assert torch.equal(decoded, batch["frame_index"])
    n = 12  # v.000 has 12 frames
    idx = batch["frame_index"][0]
    assert batch["timestamps"][0].tolist() == [0.5 * i + 0.25 for i in idx.tolist()]
    assert batch["inside"][0].tolist() == [n // 3 <= i < 2 * n // 3 for i in idx.tolist()]


def test_unlabelled_videos_get_primary_minus_one(tmp_path: Path) -> None:
    write_shards(tmp_path, "testing", [2])
    batch = next(iter(eval_loader(tmp_path, subset="testing", num_workers=0)))
    assert batch["label"].tolist() == [-1, -1] and not batch["labels"].any()


def test_eval_takes_segment_centres_and_train_random_frames_within_segments(shard_dir: Path) -> None:
    lengths = {f"v.{v:03d}": 12 + (v * 7) % 30 for v in range(sum(UNEVEN))}
    for batch in eval_loader(shard_dir, num_workers=0):
        for vid, idx in zip(batch["id"], batch["frame_index"].tolist()):
            assert idx == segment_indices(lengths[vid], T)
    chosen: dict[str, set] = {}
    for epoch in range(3):
        loader, _ = train_loader(shard_dir, epoch=epoch, num_workers=0)
        for batch in loader:
            px = pixels(batch["frames"])
            decoded = ((px[:, :, 0].mean((-1, -2)) - 20) / 4).round().long()
            assert torch.equal(decoded, batch["frame_index"])
            for vid, idx in zip(batch["id"], batch["frame_index"].tolist()):
                n = lengths[vid]
                assert all(i * n // T <= f < max(i * n // T + 1, (i + 1) * n // T) for i, f in enumerate(idx))
                chosen.setdefault(vid, set()).add(tuple(idx))
    assert any(len(v) > 1 for v in chosen.values())  # random, not fixed


def test_segment_indices() -> None:
    assert segment_indices(32, 8) == [2, 6, 10, 14, 18, 22, 26, 30]  # TSN: int(tick / 2 + tick * i)
    assert segment_indices(5, 8) == [0, 0, 1, 2, 2, 3, 4, 4]  # short: repeats, in time order
    rng = random.Random(0)
    draws = [segment_indices(5, 8, rng) for _ in range(5)]
    assert all(d == [0, 0, 1, 1, 2, 3, 3, 4] for d in draws)
    seen = {tuple(segment_indices(40, 8, rng)) for _ in range(50)}
    assert len(seen) > 40 and all(5 * i <= f < 5 * i + 5 for s in seen for i, f in enumerate(s))
    with pytest.raises(ValueError):
        segment_indices(0, 8)


def test_short_videos_repeat_frames(tmp_path: Path) -> None:
    write_shards(tmp_path, "validation", [2], lengths=[5, 1])
    write_shards(tmp_path, "training", [2], lengths=[5, 1])
    batch = next(iter(eval_loader(tmp_path, num_workers=0)))
    assert batch["frame_index"].tolist() == [[0, 0, 1, 2, 2, 3, 4, 4], [0] * T]
    loader, _ = train_loader(tmp_path, num_workers=0, batch_size=2)
    batch = next(iter(loader))
    decoded = ((pixels(batch["frames"])[:, :, 0].mean((-1, -2)) - 20) / 4).round().long()
    assert torch.equal(decoded, batch["frame_index"]) and batch["frames"].shape == (2, T, 3, S, S)


def test_train_crop_and_flip_are_shared_by_all_frames_of_a_clip(shard_dir: Path) -> None:
    flips, crops = Counter(), set()
    for epoch in range(3):
        loader, _ = train_loader(shard_dir, epoch=epoch, num_workers=0)
        for batch in loader:
            green_blue = pixels(batch["frames"])[:, :, 1:]  # [B, T, 2, S, S]: the ramps, same in every frame
            assert (green_blue - green_blue[:, :1]).abs().max() < 8
            for clip in green_blue[:, 0]:
                flips[bool(clip[0, :, -1].mean() < clip[0, :, 0].mean())] += 1
                crops.add((round(float(clip[0].min()) / 8), round(float(clip[0].max()) / 8),
                           round(float(clip[1].min()) / 8)))
    assert flips[True] > 0 and flips[False] > 0
    assert len(crops) > 2  # several scales / corners


def test_eval_is_a_resized_centre_crop(shard_dir: Path) -> None:
    a = next(iter(eval_loader(shard_dir, num_workers=0)))["frames"]
    b = next(iter(eval_loader(shard_dir, num_workers=0)))["frames"]
    assert torch.equal(a, b)
    green = pixels(a)[0, 0, 1]
    # 40x56 -> 36x50, centre 32x32: the ramp keeps its middle, columns 9..40 of 50 -> symmetric about 127.5.
    assert abs(float(green.mean()) - 127.5) < 3
    assert float(green[:, 0].mean()) == pytest.approx(255 * 9 / 49, abs=6)


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_inputs_raise_errors_naming_the_path(tmp_path: Path, shard_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_loader(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"training-000005.tar does not exist \(and 4 more of 10\)"):
        resolve_shards(str(shard_dir / "training-{000000..000009}.tar"))
    with pytest.raises(DataError, match="no subset 'testing' \\(it has: training, validation\\)"):
        eval_loader(shard_dir, subset="testing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no validation-\\*.tar shards"):
        eval_loader(tmp_path / "empty")
    loose = tmp_path / "loose"
    urls = write_shards(loose, "training", [2])
    (loose / "sizes.json").unlink()
    with pytest.raises(FileNotFoundError, match="sizes.json"):
        train_loader(urls)
    assert resolve_shards(str(shard_dir / "training-{000000..000004}.tar")) == resolve_shards(shard_dir, "training")
    with pytest.raises(FileNotFoundError, match="empty"):
        resolve_shards("")
    with pytest.raises(ValueError, match="resize"):
        eval_loader(shard_dir, resize=S - 1)


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corrupt")
    write_shards(root, "training", [4, 4], corrupt={2: "jpeg", 5: "frame"})
    write_shards(root, "validation", [4, 4], corrupt={5: "jpeg"})
    return root


def test_eval_raises_on_a_corrupt_sample_naming_shard_and_key(corrupt_dir: Path) -> None:
    with pytest.raises(DataError, match=r"validation-000001\.tar: sample 'v_005': cannot decode"):
        [b for b in eval_loader(corrupt_dir, num_workers=0)]


def test_eval_raises_on_a_truncated_shard(tmp_path: Path) -> None:
    urls = write_shards(tmp_path, "validation", [3])
    data = Path(urls[0]).read_bytes()
    Path(urls[0]).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="validation-000000.tar"):
        [b for b in eval_loader(tmp_path, num_workers=0)]


def test_train_skips_and_logs_bad_samples_and_keeps_the_batch_count(corrupt_dir: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sofnet")
    ids = []
    for rank in range(2):
        steps, batches = train_epoch(corrupt_dir, rank, 2, epoch=0, num_workers=0, batch_size=2)
        assert steps == 2 and [len(b) for b in batches] == [2, 2]
        ids += [i for b in batches for i in b]
    assert "v.002" not in ids and "v.005" not in ids
    assert len(ids) == 8  # the two bad ones were replaced by the samples after each slot's range
    text = caplog.text
    assert "training-000000.tar: sample 'v_002': cannot decode" in text
    assert "training-000001.tar: sample 'v_005': num_frames is 17 but 1 frames are missing, e.g. 0016.jpg" in text


# ---------------------------------------------------------------------------------------------- gathering
def test_merge_eval_parts_joins_uneven_ranks_and_checks_exactly_once() -> None:
    parts = [(["b", "a"], [np.array([[2.0], [1.0]])]), ([], [np.zeros((0, 1))]), (["c"], [np.array([[3.0]])])]
    ids, (scores,) = merge_eval_parts(parts, expected=3)
    assert ids == ["a", "b", "c"] and scores[:, 0].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(DataError, match="more than once"):
        merge_eval_parts(parts + [(["a"], [np.array([[1.0]])])])
    with pytest.raises(DataError, match="expected 4"):
        merge_eval_parts(parts, expected=4)


def test_gather_eval_without_a_process_group_returns_the_local_part(shard_dir: Path) -> None:
    loader = eval_loader(shard_dir, num_workers=2)
    ids, targets = [], []
    for batch in loader:
        ids += batch["id"]
        targets.append(batch["labels"])
    ids, (labels,) = gather_eval(ids, targets, expected=loader.dataset.num_videos)
    assert ids == sorted(ids) and labels.shape == (sum(UNEVEN), K)
    assert labels[ids.index("v.000")].tolist() == [1, 1, 0, 0, 0]
    assert gather_eval([], []) == ([], [])


def _gather_rank(rank: int, world_size: int, root: str, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        loader = eval_loader(Path(root), rank=rank, world_size=world_size, num_workers=0)
        ids, targets = [], []
        for batch in loader:
            ids += batch["id"]
            targets.append(batch["labels"])
        all_ids, (labels,) = gather_eval(ids, targets, expected=loader.dataset.num_videos)
        Path(out, f"{rank}.json").write_text(json.dumps({"local": ids, "all": all_ids, "rows": labels.tolist()}))
    finally:
        torch.distributed.destroy_process_group()


def test_gather_eval_over_a_real_process_group(shard_dir: Path, tmp_path: Path) -> None:
    world = 2
    torch.multiprocessing.spawn(_gather_rank, args=(world, str(shard_dir), f"file://{tmp_path}/pg", str(tmp_path)),
                                nprocs=world)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(world)]
    expected = [f"v.{v:03d}" for v in range(sum(UNEVEN))]
    assert sorted(results[0]["local"] + results[1]["local"]) == expected  # disjoint parts of uneven size
    assert len(results[0]["local"]) != len(results[1]["local"])
    assert results[0]["all"] == results[1]["all"] == expected and results[0]["rows"] == results[1]["rows"]


def test_train_survives_a_shard_that_vanishes_after_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sofnet")
    urls = write_shards(tmp_path, "training", [3, 3, 3])
    loader, steps = train_loader(tmp_path, num_workers=0, batch_size=2)
    Path(urls[1]).unlink()
    assert [len(b["id"]) for b in loader] == [2] * steps == [2] * 4
    assert "training-000001.tar" in caplog.text
