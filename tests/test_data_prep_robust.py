"""A whole run over a folder of good, odd and broken videos on a local Ray: nothing crashes, nothing good is lost."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_prep.checks import InputError
from data_prep.labels import load_activitynet_json
from data_prep.media import index_frame, patch_avi_frame_count, truncate, write_audio_only, write_video
from data_prep.runner import prepare
from process_helpers import prepare_on_ray
from data_prep.shards import PrepParams

CLASSES = ["Alpha", "Beta", "Gamma"]
FIELDS = {"id", "key", "subset", "labels", "label_names", "segments", "segment_labels", "duration", "fps",
          "timestamps", "inside", "num_frames", "source", "width", "height"}
# id -> (file name or None, labels, segments, subset, expected: "ok" | "ok+warning" | a reason prefix)
VIDEOS = {
    "goodH264": ("v_goodH264.mp4", ["Alpha"], [[2.0, 5.0]], "training", "ok"),
    "-startsAt2s": ("-startsAt2s.mkv", ["Beta"], [[1.0, 3.0]], "training", "ok"),
    "audioFirst": ("v_audioFirst.mp4", ["Gamma"], [[0.0, 8.0]], "training", "ok"),
    "aviLiar": ("aviLiar.avi", ["Alpha"], [[3.0, 6.0]], "training", "ok+warning"),
    "aviNoCount": ("aviNoCount.avi", ["Beta"], [[3.0, 6.0]], "training", "ok"),
    "mpegPS": ("mpegPS.mpg", ["Gamma"], [[0.5, 1.5]], "training", "ok"),
    "vfr": ("v_vfr.mkv", ["Alpha"], [[1.0, 2.0]], "validation", "ok"),
    "tiny": ("tiny.mp4", ["Beta"], [[0.0, 0.3]], "validation", "ok"),
    "multi": ("multi.webm", ["Alpha", "Gamma"], [[0.5, 2.0], [4.0, 6.0]], "validation", "ok"),
    "halfKnown": ("halfKnown.mp4", ["Gamma", "Zeta"], [[1.0, 2.0], [3.0, 4.0]], "training", "ok+warning"),
    "dotted.id.v2": ("dotted.id.v2.mp4", ["Alpha"], [[0.0, 1.0]], "training", "ok"),
    "truncFaststart": ("truncFaststart.mp4", ["Beta"], [[0.0, 2.0]], "training", "ok+warning"),
    "bikes": ("v_bikes.mp4", ["Alpha"], [[2.5, 7.5]], "training", "ok"),
    "carphone": ("carphone.mp4", ["Beta"], [[0.0, 4.0]], "validation", "ok"),
    "bigbuckbunny": ("v_bigbuckbunny.mp4", ["Gamma"], [[1.0, 3.0]], "training", "ok"),
    "zeroBytes": ("zeroBytes.mp4", ["Alpha"], [[0.0, 1.0]], "training", "empty file"),
    "textFile": ("v_textFile.mp4", ["Alpha"], [[0.0, 1.0]], "training", "not a readable media file"),
    "truncMoovLast": ("truncMoovLast.mp4", ["Beta"], [[0.0, 1.0]], "training", "not a readable media file"),
    "audioOnly": ("audioOnly.m4a", ["Gamma"], [[0.0, 1.0]], "training", "no video stream"),
    "noFile": (None, ["Alpha"], [[0.0, 1.0]], "training", "no video file found"),
    "badLabel": ("badLabel.mp4", ["Zeta"], [[0.0, 1.0]], "training", "label not in class list"),
}


def make_videos(folder: Path, shared: Path) -> None:
    """Write every file of VIDEOS (real encodes, damaged copies, links to the shared clips)."""
    rng = np.random.default_rng(0)
    frames = [index_frame(i) for i in range(80)]
    noisy = [np.concatenate([f[:32], rng.integers(0, 256, f[32:].shape, dtype=np.uint8)]) for f in frames]
    write_video(folder / "v_goodH264.mp4", frames)
    write_video(folder / "-startsAt2s.mkv", frames, start=2.0)
    write_video(folder / "v_audioFirst.mp4", frames, audio="first")
    for name, count in (("aviLiar.avi", 9999), ("aviNoCount.avi", 0)):
        patch_avi_frame_count(write_video(folder / name, frames, codec="mpeg4", container="avi"), count)
    write_video(folder / "mpegPS.mpg", frames[:50], fps=25, codec="mpeg1video", container="mpeg", audio="first")
    write_video(folder / "v_vfr.mkv", frames[:6], times=[0.0, 0.1, 1.5, 1.6, 3.0, 4.5])
    write_video(folder / "tiny.mp4", frames[:5])
    write_video(folder / "multi.webm", frames[:70], container="matroska")  # an extension that does not match
    write_video(folder / "halfKnown.mp4", frames[:50])
    write_video(folder / "dotted.id.v2.mp4", frames[:40])
    truncate(write_video(folder / "truncFaststart.mp4", noisy, faststart=True, gop=10), 0.6)
    (folder / "zeroBytes.mp4").write_bytes(b"")
    (folder / "v_textFile.mp4").write_text("not a video\n" * 100)
    truncate(write_video(folder / "truncMoovLast.mp4", noisy), 0.5)
    write_audio_only(folder / "audioOnly.m4a")
    write_video(folder / "badLabel.mp4", frames[:30])
    for name, target in (("v_bikes.mp4", "bikes.mp4"), ("carphone.mp4", "carphone_distorted.mp4"),
                         ("v_bigbuckbunny.mp4", "bigbuckbunny.mp4")):
        os.symlink(shared / "videos" / target, folder / name)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("robust")
    (root / "videos").mkdir()
    make_videos(root / "videos", shared_dir)
    database = {
        vid: {"subset": subset, "duration": 8.0, "resolution": "", "url": "",
              "annotations": [{"segment": s, "label": label} for s, label in zip(segments, labels, strict=True)]}
        for vid, (_, labels, segments, subset, _) in VIDEOS.items()
    }
    annotation = root / "anet.json"
    annotation.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": database}))
    source = load_activitynet_json(annotation, classes=CLASSES, subsets=["training", "validation"])
    params = PrepParams(short_side=64, shard_size=4)
    summary = prepare_on_ray(source, root / "videos", root / "out", params, num_cpus=2, progress=False)
    return root / "out", summary


def samples(out: Path) -> list[dict]:
    found = []
    for shard in sorted(out.glob("*.tar")):
        for sample in wds.WebDataset(str(shard), shardshuffle=False):
            found.append({**sample, "meta": json.loads(sample["json"]), "shard": shard.name})
    return found


def test_every_good_video_is_written_and_every_bad_one_reported(run: tuple[Path, dict]) -> None:
    out, summary = run
    report = json.loads((out / "report.json").read_text())
    reasons = {item["id"]: item["reason"] for item in report["skipped"]}
    for vid, (_, _, _, _, expected) in VIDEOS.items():
        if not expected.startswith("ok"):
            assert reasons.get(vid, "").startswith(expected), (vid, reasons.get(vid))
    good = {vid for vid, spec in VIDEOS.items() if spec[4].startswith("ok")}
    assert set(reasons) == set(VIDEOS) - good
    assert {s["meta"]["id"] for s in samples(out)} == good
    warned = {item["id"] for item in report["warnings"]}
    assert warned == {vid for vid, spec in VIDEOS.items() if spec[4] == "ok+warning"}
    assert report["counts"]["written"] == summary["written"] == len(good)
    assert report["counts"]["skipped"] == len(VIDEOS) - len(good)
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.tmp"))


def test_samples_follow_the_shard_format(run: tuple[Path, dict]) -> None:
    out, _ = run
    found = samples(out)
    sizes = json.loads((out / "sizes.json").read_text())
    assert sizes == {name: sum(1 for s in found if s["shard"] == name) for name in sizes}
    assert sorted(sizes) == sorted(p.name for p in out.glob("*.tar"))
    keys = [s["__key__"] for s in found]
    assert len(keys) == len(set(keys))
    for sample in found:
        meta = sample["meta"]
        assert set(meta) == FIELDS
        assert meta["key"] == sample["__key__"] == meta["id"].replace(".", "_")
        assert sample["shard"].startswith(meta["subset"] + "-")
        frames = sorted(k for k in sample if k.endswith(".jpg"))
        assert frames == [f"{i:04d}.jpg" for i in range(meta["num_frames"])] and meta["num_frames"] >= 16
        assert len(meta["timestamps"]) == len(meta["inside"]) == meta["num_frames"]
        assert meta["timestamps"] == sorted(meta["timestamps"])
        assert all(0 <= t <= meta["duration"] for t in meta["timestamps"])
        inside = [int(any(a <= t <= b for a, b in meta["segments"])) for t in meta["timestamps"]]
        assert meta["inside"] == inside
        assert meta["label_names"] == [CLASSES[i] for i in meta["labels"]]
        assert len(meta["segments"]) == len(meta["segment_labels"])
        assert min(meta["width"], meta["height"]) == 64
        for name in (frames[0], frames[-1]):
            assert Image.open(io.BytesIO(sample[name])).size == (meta["width"], meta["height"])
        assert Path(meta["source"]).name == VIDEOS[meta["id"]][0]


def test_labels_segments_and_odd_timing(run: tuple[Path, dict]) -> None:
    out, _ = run
    meta = {s["meta"]["id"]: s["meta"] for s in samples(out)}
    assert meta["multi"]["labels"] == [0, 2] and meta["multi"]["segment_labels"] == [0, 2]
    assert meta["halfKnown"]["labels"] == [2] and meta["halfKnown"]["segments"] == [[1.0, 2.0]]
    assert {0, 1} == set(meta["goodH264"]["inside"]) and {1} == set(meta["audioFirst"]["inside"])
    assert meta["-startsAt2s"]["timestamps"][0] < 1.0 and meta["-startsAt2s"]["duration"] == pytest.approx(8.0)
    assert meta["aviLiar"]["duration"] == pytest.approx(8.0) and meta["mpegPS"]["duration"] == pytest.approx(2.0)
    assert meta["vfr"]["fps"] > 0 and set(meta["vfr"]["timestamps"]) <= {0.0, 0.1, 1.5, 1.6, 3.0, 4.5}
    assert meta["tiny"]["num_frames"] == 16 and len(set(meta["tiny"]["timestamps"])) == 5  # dense: repeats
    assert meta["truncFaststart"]["duration"] < 7.0
    assert meta["dotted.id.v2"]["key"] == "dotted_id_v2"
    assert meta["bikes"]["num_frames"] == 16 and meta["bikes"]["fps"] == 25.0


def test_manifest_and_a_rerun_that_has_nothing_to_do(run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == CLASSES and manifest["dataset"] == "activitynet"
    assert manifest["params"]["short_side"] == 64 and manifest["params"]["shard_size"] == 4
    for subset, entry in manifest["subsets"].items():
        written = [vid for vid, spec in VIDEOS.items() if spec[3] == subset and spec[4].startswith("ok")]
        assert entry["videos"] == len(written)
        assert entry["shards"] == sorted(p.name for p in out.glob(f"{subset}-*.tar"))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tar")}
    annotation = out.parent / "anet.json"
    source = load_activitynet_json(annotation, classes=CLASSES, subsets=["training", "validation"])
    params = PrepParams(short_side=64, shard_size=4)
    summary = prepare_on_ray(source, out.parent / "videos", out, params, progress=False)
    assert summary["processed"] == 0 and summary["written"] == len(samples(out))
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*.tar")} == before
    with pytest.raises(InputError, match="other parameters: short_side 64 -> 32"):
        prepare(source, out.parent / "videos", out, PrepParams(short_side=32, shard_size=4), use_ray=False)
