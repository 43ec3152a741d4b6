"""manifest.json says what the shards were made with: presence per subset, parameters, decoder versions, digest.

A real run (``prepare`` in this process, real H.264 videos from PyAV and a shared clip) into two subsets, one
annotated video without a file; the digest is recomputed here from the tar bytes with hashlib, independently of
data_prep's own code, and shown to change when a shard's bytes or the parameters change.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import av
import pytest

from data_prep.labels import load_activitynet_json
from data_prep.manifest import read_digest, verify_digest
from data_prep.media import index_frame, write_video
from data_prep.runner import prepare
from data_prep.shards import PrepParams
from sofnet.data import read_manifest

PARAMS = PrepParams(short_side=32, shard_size=1, quality=80)


def digest_of(out: Path, names: list[str]) -> str:
    lines = "".join(f"{name} {hashlib.sha256((out / name).read_bytes()).hexdigest()}\n" for name in sorted(names))
    return hashlib.sha256(lines.encode()).hexdigest()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("manifest")
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "v_made.mp4", [index_frame(i) for i in range(40)], fps=10)
    os.symlink(shared_dir / "videos" / "carphone_distorted.mp4", videos / "carphone.mp4")
    database = {
        "made": {"subset": "training", "annotations": [{"segment": [0.5, 2.0], "label": "Biking"}]},
        "carphone": {"subset": "training", "annotations": [{"segment": [0.0, 3.0], "label": "Phoning"}]},
        "gone": {"subset": "training", "annotations": [{"segment": [0.0, 3.0], "label": "Biking"}]},  # no file
        "carphone2": {"subset": "validation", "annotations": [{"segment": [1.0, 2.0], "label": "Phoning"}]},
    }
    annotation = root / "anet.json"
    annotation.write_text(json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": database}))
    os.symlink(shared_dir / "videos" / "carphone_distorted.mp4", videos / "carphone2.mp4")
    return annotation, videos


def run(dataset: tuple[Path, Path], out: Path, params: PrepParams = PARAMS, overwrite: bool = False) -> dict:
    annotation, videos = dataset
    prepare(load_activitynet_json(annotation), videos, out, params, use_ray=False, progress=False, overwrite=overwrite)
    return read_manifest(out)


def test_manifest_records_presence_parameters_decoders_and_digest(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = run(dataset, out)
    assert manifest["format"] == 2 and manifest["classes"] == ["Biking", "Phoning"]
    assert {k: manifest["params"][k] for k in ("fps", "short_side", "quality")} == {
        "fps": 1.0, "short_side": 32, "quality": 80}
    assert "decode_timeout" not in manifest["params"]  # changes no sample: a resume may use another one
    libraries = {name: ".".join(map(str, v)) for name, v in av.library_versions.items()}
    assert manifest["decoders"] == [{"pyav": av.__version__, "ffmpeg": dict(sorted(libraries.items()))}]
    training, validation = manifest["subsets"]["training"], manifest["subsets"]["validation"]
    assert (training["annotated"], training["present"], training["videos"]) == (3, 2, 2)
    assert (validation["annotated"], validation["present"], validation["videos"]) == (1, 1, 1)
    for entry in (training, validation):
        assert entry["sha256"] == {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
                                   for name in entry["shards"]}
    all_shards = training["shards"] + validation["shards"]
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(all_shards)
    assert manifest["digest"] == digest_of(out, all_shards) == read_digest(out) == verify_digest(out)
    assert validation["digest"] == digest_of(out, validation["shards"]) == read_digest(out, "validation")
    assert validation["digest"] != manifest["digest"]


def test_digest_follows_the_bytes(dataset: tuple[Path, Path], tmp_path: Path) -> None:
    first = run(dataset, tmp_path / "a")["digest"]
    assert run(dataset, tmp_path / "b")["digest"] == first  # same input, same bytes: the same digest
    assert run(dataset, tmp_path / "b", PrepParams(short_side=32, shard_size=1, quality=60),
               overwrite=True)["digest"] != first
    shard = tmp_path / "a" / "validation-000000.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one changed byte, the shard's size unchanged
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="validation-000000.tar: sha256"):
        verify_digest(tmp_path / "a", "validation")
    assert verify_digest(tmp_path / "a", "training") == read_digest(tmp_path / "a", "training")
