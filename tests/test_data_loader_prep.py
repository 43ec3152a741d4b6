"""The loader over shards that data_prep wrote from real H.264 videos (the synthetic ActivityNet-format set)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sofnet.data import make_eval_loader, make_train_loader, read_manifest

synthetic = pytest.importorskip("data_prep.synthetic", reason="data_prep.synthetic is not in this checkout")
shards_mod = pytest.importorskip("data_prep.shards")

T, S = 8, 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("prep")
    annotation = synthetic.generate(root / "raw", videos=12, classes=3, seed=0, duration=(3.0, 5.0), size=(64, 48),
                                    fps=8)
    params = shards_mod.PrepParams(short_side=48, shard_size=2, fps=4.0, min_frames=4)
    summary = synthetic.make_shards(annotation, root / "shards", params=params, use_ray=False)
    assert summary["written"] == 12
    return root / "shards", json.loads(Path(annotation).read_text())["database"]


def test_eval_reads_every_prepared_video_once_with_its_annotation(prepared: tuple[Path, dict]) -> None:
    shards, database = prepared
    classes = read_manifest(shards)["classes"]
    for subset in ("training", "validation"):
        seen = Counter()
        for rank in range(2):
            loader = make_eval_loader(shards, subset=subset, num_segments=T, input_size=S, resize=S, batch_size=4,
                                      num_workers=1, num_classes=len(classes), rank=rank, world_size=2)
            for batch in loader:
                assert batch["frames"].shape[1:] == (T, 3, S, S)
                for i, vid in enumerate(batch["id"]):
                    seen[vid] += 1
                    entry = database[vid]
                    names = {a["label"] for a in entry["annotations"]}
                    assert {classes[c] for c in batch["labels"][i].nonzero().flatten().tolist()} == names
                    segments = [a["segment"] for a in entry["annotations"]]
                    for t, inside in zip(batch["timestamps"][i].tolist(), batch["inside"][i].tolist()):
                        assert inside == any(s <= t <= e for s, e in segments)
        expected = {vid for vid, entry in database.items() if entry["subset"] == subset}
        assert set(seen) == expected and set(seen.values()) == {1}


def test_train_over_prepared_shards_gives_both_ranks_the_same_batches(prepared: tuple[Path, dict]) -> None:
    shards, _ = prepared
    counts = []
    for rank in range(2):
        loader, steps = make_train_loader(shards, num_segments=T, input_size=S, batch_size=2, num_workers=1,
                                          num_classes=3, rank=rank, world_size=2, seed=1)
        counts.append((steps, sum(1 for _ in loader)))
    videos = read_manifest(shards)["subsets"]["training"]["videos"]
    assert counts == [(videos // 4, videos // 4)] * 2  # training videos // (2 ranks x batch 2)
