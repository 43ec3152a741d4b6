"""The shard fps decides what TSN segment sampling can pick: a 6 s video at 1 fps repeats frames, at native fps not.

Real path: a 6 s, 25 fps H.264 video whose frames show their own index, sharded by ``data_prep.runner.prepare``
at ``--fps 1`` (``--min-frames 1``, so 6 stored frames), at ``--fps native`` (150) and at the default dense policy
(``--min-frames 16``), then read back by ``sofnet.data.make_eval_loader`` (segment centres) and sampled with
``sofnet.clips.segment_indices`` (a random frame per segment, as training does), 16 segments as the paper.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_prep.labels import load_activitynet_json
from data_prep.media import index_frame, read_index, write_video
from data_prep.runner import prepare
from data_prep.shards import PrepParams
from sofnet.clips import segment_indices
from sofnet.data import make_eval_loader, read_manifest

T = 16
FPS = 25


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fps")
    (root / "videos").mkdir()
    write_video(root / "videos" / "v_sixSeconds.mp4", [index_frame(i) for i in range(6 * FPS)], fps=FPS)
    database = {"sixSeconds": {"subset": "validation", "duration": 6.0,
                               "annotations": [{"segment": [1.0, 4.0], "label": "Biking"}]}}
    annotation = root / "anet.json"
    annotation.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": database}))
    return annotation, root / "videos"


def shard(source: tuple[Path, Path], out: Path, **params: object) -> tuple[dict, list[bytes]]:
    annotation, videos = source
    prepare(load_activitynet_json(annotation), videos, out, PrepParams(short_side=0, **params), use_ray=False,
            progress=False)
    sample = next(iter(wds.WebDataset(str(out / "validation-000000.tar"), shardshuffle=False)))
    meta = json.loads(sample["json"])
    return meta, [sample[f"{i:04d}.jpg"] for i in range(meta["num_frames"])]


def shown(jpeg: bytes) -> int:
    """The source frame number a stored JPEG shows."""
    return read_index(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")))


def eval_indices(out: Path) -> list[int]:
    loader = make_eval_loader(out, num_segments=T, input_size=32, resize=32, batch_size=1, num_workers=0,
                              num_classes=len(read_manifest(out)["classes"]))
    batch = next(iter(loader))
    return batch["frame_index"][0].tolist()


def test_one_fps_repeats_frames_native_fps_does_not(source: tuple[Path, Path], tmp_path: Path) -> None:
    low_meta, low = shard(source, tmp_path / "fps1", fps=1.0, min_frames=1)
    native_meta, native = shard(source, tmp_path / "native", fps="native", min_frames=1)
    assert read_manifest(tmp_path / "fps1")["params"]["fps"] == 1.0
    assert read_manifest(tmp_path / "native")["params"]["fps"] == "native"
    assert low_meta["num_frames"] == 6 and native_meta["num_frames"] == 6 * FPS
    assert [shown(j) for j in native] == list(range(6 * FPS))  # every frame once, in order

    low_eval, native_eval = eval_indices(tmp_path / "fps1"), eval_indices(tmp_path / "native")
    assert low_eval == segment_indices(6, T) and native_eval == segment_indices(6 * FPS, T)
    assert len({shown(low[i]) for i in low_eval}) == 6  # 16 segments show 6 pictures: 10 are repeats
    assert len({shown(native[i]) for i in native_eval}) == T  # 16 different pictures
    rng = random.Random(1007)
    for _ in range(20):  # training: a random frame per segment
        assert len(set(segment_indices(6, T, rng))) == 6
        picks = segment_indices(6 * FPS, T, rng)
        assert len({shown(native[i]) for i in picks}) == T


def test_default_dense_policy_gives_sixteen_distinct_frames(source: tuple[Path, Path], tmp_path: Path) -> None:
    meta, jpegs = shard(source, tmp_path / "dense", fps=1.0)  # min_frames 16 > 6 targets: 16 even timestamps
    assert meta["num_frames"] == T and len({shown(j) for j in jpegs}) == T
    assert len({shown(jpegs[i]) for i in eval_indices(tmp_path / "dense")}) == T
