"""Label sources on the real ActivityNet and mini-Sports1M files, and the two commands on real lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from data_prep.activitynet import load_sources
from data_prep.labels import Entry, detect_format, load_activitynet_json, read_classes
from data_prep.lists import load_csv, load_split_list, load_whitespace_list
from data_prep.sources import VideoIndex
from data_prep_helpers import run_module, shard_metas


@pytest.fixture(scope="module")
def anet(shared_dir: Path) -> Path:
    return shared_dir / "data" / "activitynet"


@pytest.fixture(scope="module")
def database(anet: Path) -> dict:
    return json.loads((anet / "activity_net.v1-3.bsn.json").read_text())["database"]


def test_official_json(anet: Path, database: dict) -> None:
    source = load_activitynet_json(anet / "activity_net.v1-3.bsn.json", subsets=["training", "validation"])
    assert source.classes == read_classes(anet / "classInd.txt")  # empty taxonomy: sorted labels = classInd order
    assert len(source.classes) == 200 and not source.problems
    assert len(source.entries) == 9649 + 4728
    multi = [e for e in source.entries if len(database[e.id]["annotations"]) > 1]
    for entry in multi[:200]:
        names = [a["label"] for a in database[entry.id]["annotations"]]
        assert entry.labels == sorted({source.classes.index(name) for name in names})  # smallest id first
        assert [source.classes[i] for i in entry.segment_labels] == names
        assert entry.segments == [a["segment"] for a in database[entry.id]["annotations"]]
    testing = load_activitynet_json(anet / "activity_net.v1-3.bsn.json", subsets=["testing"])
    assert len(testing.entries) == 4851 and all(not e.labels and not e.segments for e in testing.entries)


def test_split_lists_and_mmaction_lists_agree_with_the_json(anet: Path, database: dict) -> None:
    class_ind = read_classes(anet / "classInd.txt")
    label_map = read_classes(anet / "mmaction_lists" / "label_map.txt")
    assert sorted(label_map) == class_ind and label_map != class_ind  # same names, another order
    lists = [
        (load_split_list(anet / "actnet_train_split.txt", class_ind), "training", 10014),
        (load_split_list(anet / "actnet_val_split.txt", class_ind), "validation", 4921),
        (load_whitespace_list(anet / "mmaction_lists" / "anet_train_video.txt", label_map), "training", 10024),
        (load_whitespace_list(anet / "mmaction_lists" / "frameexit_anet_val_video_multi_label.txt", class_ind),
         "validation", 4926),
    ]
    for source, subset, count in lists:
        assert len(source.entries) == count and not source.problems
        assert {e.subset for e in source.entries} == {subset}
        assert any(e.id.startswith("-") for e in source.entries)
        assert not any(e.id.startswith("v_v_") for e in source.entries)  # mmaction's prefix is dropped, once
        known = [e for e in source.entries if e.id in database]
        assert len(known) > 0.95 * count
        mismatched = [e for e in known if {source.classes[i] for i in e.labels}
                      != {a["label"] for a in database[e.id]["annotations"]}]
        assert len(mismatched) <= 5  # the few relabelled videos of the v1.3 release
    assert "v_Vg4a8igc0" in {e.id for e in lists[2][0].entries}  # a real id that starts with v_
    assert "v_Vg4a8igc0" in database
    merged = load_sources([str(anet / "activity_net.v1-3.bsn.json"), str(anet / "actnet_val_split.txt")],
                          str(anet / "classInd.txt"), ["validation"])
    duplicates = [p for p in merged.problems if p["reason"].startswith("duplicate id")]
    assert len(duplicates) == 4723 and len(merged.entries) == 4728 + 4921 - 4723
    assert detect_format(anet / "actnet_train_split.txt") == "split"
    assert detect_format(anet / "mmaction_lists" / "anet_train_video.txt") == "whitespace"


def test_mini_sports1m_list(shared_dir: Path) -> None:
    folder = shared_dir / "data" / "sports1m"
    classes = read_classes(folder / "sports1m_labels.txt")
    assert len(classes) == 487 and "pétanque" in classes and classes[0] == "boomerang"
    train = load_whitespace_list(folder / "bear_mini_sports1m" / "train.csv", classes, dataset="sports1m")
    test = load_whitespace_list(folder / "bear_mini_sports1m" / "test.csv", classes, dataset="sports1m")
    assert len(train.entries) == 19459 and len(test.entries) == 4870
    assert train.entries[0].id == "train/23701" and train.entries[0].labels == [237]
    assert {e.subset for e in train.entries} == {"training"} and {e.subset for e in test.entries} == {"testing"}
    assert not any("\r" in e.id for e in train.entries)
    assert detect_format(folder / "bear_mini_sports1m" / "train.csv") == "whitespace"  # .csv but spaces


def test_unknown_labels_duplicates_and_csv(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    (tmp_path / "split_train.txt").write_text("x1,100,0\r\nx2,100,7\r\nx3,100,1,9,1\r\nx1,50,2\r\n")
    source = load_split_list(tmp_path / "split_train.txt", classes)
    assert [(e.id, e.labels) for e in source.entries] == [("x1", [0]), ("x3", [1])]
    assert {p["id"]: p["reason"].split(":")[0] for p in source.problems} == {
        "x2": "label not in class list", "x1": "duplicate id"}
    assert source.entries[1].warnings  # label 9 dropped, video kept
    (tmp_path / "clips.csv").write_text("path,label,start,end\nd/v1.mp4,b,1.0,2.5\nd/v1.mp4,a,4,5\nv2.avi,2,,\n")
    csv_source = load_csv(tmp_path / "clips.csv", classes, subset="val")
    assert detect_format(tmp_path / "clips.csv") == "csv"
    first, second = csv_source.entries
    assert (first.id, first.labels, first.has_segments) == ("d/v1", [0, 1], True)  # smallest id first
    assert first.segment_labels == [1, 0]  # per segment, in annotation order
    assert first.segments == [[1.0, 2.5], [4.0, 5.0]]
    assert (second.id, second.labels, second.has_segments, second.subset) == ("v2", [2], False, "validation")
    with pytest.raises(ValueError, match="class ids"):
        (tmp_path / "bad_classes.txt").write_text("1,a\n2,b\n")
        read_classes(tmp_path / "bad_classes.txt")


def test_activitynet_command_with_split_lists(anet: Path, shared_dir: Path, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    os.symlink(shared_dir / "videos" / "bikes.mp4", videos / "v_sJFgo9H6zNo.mp4")  # the first training id
    os.symlink(shared_dir / "videos" / "carphone_distorted.mp4", videos / "sub" / "JDg--pjY5gg.mkv")  # validation
    result = run_module("data_prep.activitynet", "--annotations", str(anet / "actnet_train_split.txt"),
                  str(anet / "actnet_val_split.txt"), "--classes", str(anet / "classInd.txt"), "--videos", str(videos),
                  "--out", str(tmp_path / "out"), "--no-ray", "--short-side", "32", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "2 videos in 2 shards" in result.stdout
    metas = shard_metas(tmp_path / "out")
    classes = read_classes(anet / "classInd.txt")
    assert metas["sJFgo9H6zNo"]["label_names"] == [classes[57]] and metas["sJFgo9H6zNo"]["subset"] == "training"
    assert metas["JDg--pjY5gg"]["subset"] == "validation" and metas["JDg--pjY5gg"]["segments"] == [[0.0, 4.004]]
    assert set(metas["JDg--pjY5gg"]["inside"]) == {1}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["skipped_by_reason"] == {"no video file found": 10014 + 4921 - 2}
    result = run_module("data_prep.activitynet", "--annotations", str(anet / "actnet_train_split.txt"),
                  "--videos", str(videos), "--out", str(tmp_path / "out2"), "--no-ray")
    assert result.returncode != 0 and "--classes" in result.stderr


def test_sports1m_command(shared_dir: Path, tmp_path: Path) -> None:
    folder = shared_dir / "data" / "sports1m"
    videos = tmp_path / "videos"
    for subset in ("train", "test"):
        (videos / subset).mkdir(parents=True)
    os.symlink(shared_dir / "videos" / "bikes.mp4", videos / "train" / "23701.mp4")
    os.symlink(shared_dir / "videos" / "bigbuckbunny.mp4", videos / "test" / "00313.mp4")
    result = run_module("data_prep.sports1m", "--list", str(folder / "bear_mini_sports1m" / "train.csv"),
                  str(folder / "bear_mini_sports1m" / "test.csv"), "--classes", str(folder / "sports1m_labels.txt"),
                  "--videos", str(videos), "--out", str(tmp_path / "out"), "--no-ray", "--short-side", "32")
    assert result.returncode == 0, result.stderr
    metas = shard_metas(tmp_path / "out")
    assert set(metas) == {"train/23701", "test/00313"}
    assert metas["train/23701"]["key"] == "train_23701" and metas["train/23701"]["labels"] == [237]
    assert metas["test/00313"]["subset"] == "testing" and metas["test/00313"]["labels"] == [31]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["dataset"] == "sports1m" and len(manifest["classes"]) == 487
    assert sorted(manifest["subsets"]) == ["testing", "training"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["testing-000000.tar", "training-000000.tar"]


def test_video_index_finds_files_by_id(tmp_path: Path) -> None:
    for name in ("v_abc.mp4", "deep/x/def.avi", "deep/def.mkv", "train/1.mp4", "test/1.MP4", "2.mp4", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    index = VideoIndex(tmp_path)
    found = {
        key: index.find(Entry(id=vid, subset="training", path=path))
        for key, vid, path in [("abc", "abc", None), ("mmaction", "abc", "v_abc"), ("def", "def", None),
                               ("train", "train/1", "train/1"), ("test", "test/1", "test/1"),
                               ("flat", "val/2", "val/2"), ("other", "val/1", "val/1"), ("txt", "notes", None)]
    }
    rel = {key: os.path.relpath(path, tmp_path) if path else None for key, path in found.items()}
    assert rel == {"abc": "v_abc.mp4", "mmaction": "v_abc.mp4", "def": "deep/def.mkv", "train": "train/1.mp4",
                   "test": "test/1.MP4", "flat": "2.mp4", "other": None, "txt": None}


def test_primary_label_is_the_smallest_class_id_on_the_real_files(anet: Path, database: dict, tmp_path: Path,
                                                                   shared_dir: Path) -> None:
    classes = read_classes(anet / "classInd.txt")
    source = load_activitynet_json(anet / "activity_net.v1-3.bsn.json")
    by_id = {entry.id: entry for entry in source.entries}
    first_differs = [vid for vid, video in database.items() if video["annotations"] and
                     classes.index(video["annotations"][0]["label"]) != by_id[vid].labels[0]]
    assert len(first_differs) == 7 and "F2x2fynkbAQ" in first_differs  # the official code's sorted(set(...))
    entry = by_id["F2x2fynkbAQ"]  # "Polishing shoes" (129) annotated first, then "Cleaning shoes" (30)
    assert entry.labels == [30, 129] and entry.segment_labels == [129, 30]
    lists = [load_split_list(anet / "actnet_train_split.txt", classes),
             load_split_list(anet / "actnet_val_split.txt", classes)]
    raw = {line.split(",")[0]: [int(x) for x in line.strip().split(",")[2:]]
           for name in ("actnet_train_split.txt", "actnet_val_split.txt") for line in open(anet / name)}
    listed = [e for source in lists for e in source.entries]
    assert sum(raw[e.id][0] != e.labels[0] for e in listed) == 9  # the 9 real videos whose order differs
    assert all(e.labels == sorted(set(raw[e.id])) for e in listed)

    videos = tmp_path / "videos"  # the real id, the shared clip as its video, through the shards and the loader
    videos.mkdir()
    os.symlink(shared_dir / "videos" / "bikes.mp4", videos / "v_F2x2fynkbAQ.mp4")
    result = run_module("data_prep.activitynet", "--annotations", str(anet / "activity_net.v1-3.bsn.json"),
                  "--videos", str(videos), "--out", str(tmp_path / "out"), "--no-ray", "--short-side", "32")
    assert result.returncode == 0, result.stderr
    meta = shard_metas(tmp_path / "out")["F2x2fynkbAQ"]
    assert meta["labels"] == [30, 129] and meta["segment_labels"] == [129, 30]
    from sofnet.data import make_eval_loader

    loader = make_eval_loader(tmp_path / "out", subset="training", num_segments=8, input_size=32, resize=32,
                              batch_size=1, num_workers=0, num_classes=200)
    assert next(iter(loader))["label"].tolist() == [30]  # what L_acc trains on
