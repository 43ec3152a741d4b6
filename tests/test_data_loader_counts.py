"""The loaders check each shard's sample count against ``sizes.json`` while streaming, on real data_prep shards.

The shards come from ``sofnet.train.cli.ensure_synthetic_shards`` (real H.264 videos through data_prep: three
training shards of 4 videos, one validation shard of 4); each test copies them and edits ``sizes.json`` (or cuts a
tar at a member boundary, which a tar reader takes for a shorter, valid shard). Unchecked, a count too high made
training read 36 samples from 12 videos in one epoch (each three times, 18 batches instead of 6; only a WARNING,
in the worker's log), and a count too low made it read 2 of 12 (1 batch, no warning at all).
"""

from __future__ import annotations

import json
import random
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from sofnet.data import DataError, make_eval_loader, make_train_loader, read_sizes, resolve_shards
from sofnet.train.cli import ensure_synthetic_shards

T, S, K, B = 4, 32, 3, 2


@pytest.fixture(scope="module")
def real_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shards = ensure_synthetic_shards(tmp_path_factory.mktemp("synthetic"))
    sizes = json.loads((shards / "sizes.json").read_text())
    assert sizes == {"training-000000.tar": 4, "training-000001.tar": 4, "training-000002.tar": 4,
                     "validation-000000.tar": 4}  # what the tests below are written for
    return shards


def copy_with_sizes(src: Path, dst: Path, **changed: int) -> Path:
    """A copy of the shard folder whose sizes.json has ``changed`` counts (``training_000001=9``)."""
    shutil.copytree(src, dst)
    sizes = json.loads((dst / "sizes.json").read_text())
    for name, count in changed.items():
        key = name.replace("_", "-") + ".tar"
        assert key in sizes
        sizes[key] = count
    (dst / "sizes.json").write_text(json.dumps(sizes))
    return dst


def train_ids(root: Path, rank: int = 0, world_size: int = 1, epoch: int = 0, num_workers: int = 0) -> list[str]:
    loader, steps = make_train_loader(root, num_segments=T, input_size=S, batch_size=B, num_workers=num_workers,
                                      num_classes=K, rank=rank, world_size=world_size, epoch=epoch, seed=0,
                                      shuffle_buffer=4)
    batches = [batch["id"] for batch in loader]
    assert len(batches) == steps and all(len(b) == B for b in batches)
    return [i for b in batches for i in b]


def eval_ids(root: Path) -> list[str]:
    loader = make_eval_loader(root, subset="validation", num_segments=T, input_size=S, resize=S, batch_size=B,
                              num_workers=0, num_classes=K)
    return [i for batch in loader for i in batch["id"]]


def shard_order(seed: int, epoch: int, n: int) -> list[int]:
    """The training loader's shard permutation of an epoch (its documented ``(seed, epoch)`` draw)."""
    order = list(range(n))
    random.Random(f"sofnet-shards-{seed}-{epoch}").shuffle(order)
    return order


def test_correct_sizes_read_every_planned_sample_once(real_shards: Path) -> None:
    for epoch in range(3):
        ids = train_ids(real_shards, epoch=epoch)
        assert len(ids) == len(set(ids)) == 12  # 12 videos // batch 2: all of them, each once
        ids = train_ids(real_shards, rank=1, world_size=2, epoch=epoch, num_workers=1) + \
            train_ids(real_shards, rank=0, world_size=2, epoch=epoch, num_workers=1)
        assert len(ids) == len(set(ids)) == 12
    assert len(set(eval_ids(real_shards))) == 4


@pytest.mark.parametrize("said", [9, 1, 0, 5, 3])
def test_train_raises_naming_the_shard_and_both_counts(real_shards: Path, tmp_path: Path, said: int) -> None:
    root = copy_with_sizes(real_shards, tmp_path / "shards", training_000001=said)
    message = rf"training-000001\.tar: sizes\.json says {said} samples, the shard has 4 "
    with pytest.raises(DataError, match=message):
        train_ids(root)


def test_train_count_too_low_in_the_last_shard_of_the_permutation_is_caught(real_shards: Path,
                                                                            tmp_path: Path) -> None:
    # sizes {4, 4, 1}: 9 samples planned, 4 batches of 2; when the shard that says 1 comes last, the epoch's
    # 8 samples end exactly where it starts, so only reading on to the end of the permutation finds it.
    epoch = next(e for e in range(50) if shard_order(0, e, 3)[-1] == 2)
    root = copy_with_sizes(real_shards, tmp_path / "shards", training_000002=1)
    with pytest.raises(DataError, match=r"training-000002\.tar: sizes\.json says 1 samples, the shard has 4 "):
        train_ids(root, epoch=epoch)


@pytest.mark.parametrize("said", [9, 1])
def test_train_over_ranks_and_workers_every_epoch_raises_on_some_rank(real_shards: Path, tmp_path: Path,
                                                                      said: int) -> None:
    root = copy_with_sizes(real_shards, tmp_path / "shards", training_000000=said)
    for epoch in range(4):
        errors = []
        for rank in range(2):
            try:
                train_ids(root, rank=rank, world_size=2, epoch=epoch, num_workers=1)  # a real worker process
            except DataError as e:
                errors.append(str(e))
        assert errors, f"epoch {epoch}: no rank noticed that sizes.json says {said} for a shard of 4"
        assert all(f"training-000000.tar: sizes.json says {said} samples, the shard has 4 " in e for e in errors)


def test_train_raises_on_a_shard_cut_at_a_member_boundary(real_shards: Path, tmp_path: Path) -> None:
    root = copy_with_sizes(real_shards, tmp_path / "shards")
    shard = root / "training-000001.tar"
    with tarfile.open(shard) as tar:
        third = [m.offset for m in tar.getmembers() if m.name.endswith(".json")][2]
    shard.write_bytes(shard.read_bytes()[:third])  # two whole samples, no end-of-archive blocks
    with pytest.raises(DataError, match=r"training-000001\.tar: sizes\.json says 4 samples, the shard has 2 "):
        train_ids(root)
    with pytest.raises(DataError, match=r"training-000001\.tar: sizes\.json says 4 samples, the shard has 2 "):
        [batch for batch in make_eval_loader(root, subset="training", num_segments=T, input_size=S, resize=S,
                                             batch_size=B, num_workers=1, num_classes=K)]


@pytest.mark.parametrize("said,has", [(7, "4"), (2, "4"), (0, "4")])
def test_eval_raises_naming_the_shard_and_both_counts(real_shards: Path, tmp_path: Path, said: int,
                                                      has: str) -> None:
    root = copy_with_sizes(real_shards, tmp_path / "shards", validation_000000=said)
    with pytest.raises(DataError, match=rf"validation-000000\.tar: sizes\.json says {said} samples, the shard has "
                                        rf"{has} "):
        eval_ids(root)


def test_a_too_high_count_reports_a_lower_bound_when_the_rest_is_unreadable(real_shards: Path,
                                                                            tmp_path: Path) -> None:
    root = copy_with_sizes(real_shards, tmp_path / "shards", validation_000000=1)
    shard = root / "validation-000000.tar"
    with tarfile.open(shard) as tar:
        json_offsets = [m.offset for m in tar.getmembers() if m.name.endswith(".json")]
    shard.write_bytes(shard.read_bytes()[:json_offsets[3] + 700])  # cut inside the fourth sample's json member
    with pytest.raises(DataError, match=r"validation-000000\.tar: sizes\.json says 1 samples, the shard has at "
                                        r"least [23] "):
        eval_ids(root)


def test_sizes_json_entries_are_what_the_loader_plans_from(real_shards: Path) -> None:
    urls = resolve_shards(real_shards, "training")
    assert read_sizes(urls) == [4, 4, 4]
    # The counts are right, so no shard raises and every video of the subset is read once per epoch.
    assert Counter(Counter(train_ids(real_shards, epoch=7)).values()) == {1: 12}
