"""Data prep on object stores (no cluster): ``data_prep.activitynet`` writing shards to and reading videos from a
bucket on a real S3 API (``moto_server``) and a real GCS JSON API (``gcp-storage-emulator``) on loopback, each test
on both (the ``bucket`` fixture, ``conftest.py``)::

    .venv/bin/pytest tests/test_data_prep_buckets.py -q -p no:cacheprovider
"""

from __future__ import annotations

from pathlib import Path

import pytest

from s3_helpers import other_bucket, upload_tree


def test_data_prep_writes_shards_to_a_bucket_and_resumes_there(bucket: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """``--out s3://...`` / ``gs://...``: the bucket gets the same shards as a disk (same manifest digest) from the same
    videos, with the resume state, the manifest and the report beside them and nothing on this disk; the loader's
    preflight takes the prefix; a rerun decodes nothing; an unwritable bucket is one line, exit 2, before any video is
    decoded."""
    import json

    from data_prep.activitynet import main as activitynet
    from data_prep.synthetic import main as synthetic
    from sofnet import storage
    from sofnet.preflight import check_shards

    assert synthetic(["--out", str(tmp_path / "raw"), "--videos", "10", "--classes", "3", "--min-duration", "3",
                      "--max-duration", "4"]) == 0
    common = ["--annotations", str(tmp_path / "raw" / "activity_net.synthetic.json"), "--videos",
              str(tmp_path / "raw" / "videos"), "--short-side", "128", "--shard-size", "2", "--no-ray", "--no-progress"]
    assert activitynet(common + ["--out", str(tmp_path / "disk")]) == 0
    prep = f"{bucket}/prep"
    assert activitynet(common + ["--out", prep]) == 0
    capsys.readouterr()
    disk = json.loads((tmp_path / "disk" / "manifest.json").read_text())
    there = json.loads(storage.read_text(f"{prep}/manifest.json"))
    assert there["digest"] == disk["digest"] and there["subsets"] == disk["subsets"]
    assert storage.list_names(prep) == sorted(p.name for p in (tmp_path / "disk").iterdir() if p.is_file())
    states = sorted(p.name for p in (tmp_path / "disk" / ".state").iterdir())
    assert storage.list_names(f"{prep}/.state") == states
    assert not list(tmp_path.glob("s3*")) and not list(tmp_path.glob("gs*")) and not Path(prep.split("/")[0]).exists()
    for subset in ("training", "validation"):
        assert check_shards(prep, subset, key="k", num_classes=3) == check_shards(
            str(tmp_path / "disk"), subset, key="k", num_classes=3)
    assert activitynet(common + ["--out", prep]) == 0
    assert "0 videos decoded in this run" in capsys.readouterr().out
    assert json.loads(storage.read_text(f"{prep}/manifest.json"))["digest"] == disk["digest"]
    assert activitynet(common + ["--out", f"{other_bucket(bucket)}/prep"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {other_bucket(bucket)}/prep: cannot write there ("), err


def _members(shards: Path) -> dict[str, bytes]:
    """Every member of every shard, ``<shard>/<name>`` -> bytes, the ``source`` of each record left out."""
    import json
    import tarfile

    out = {}
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                data = tar.extractfile(member).read()
                if member.name.endswith(".json"):
                    record = json.loads(data)
                    assert record.pop("source")
                    data = json.dumps(record, sort_keys=True).encode()
                out[f"{tar_path.name}/{member.name}"] = data
    return out


def test_data_prep_reads_videos_from_a_bucket(bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``--videos s3://...`` and ``--annotations s3://...`` (or ``gs://``): the videos are listed in the bucket and
    copied one at a time to the task's node, giving the same frames and records as the same files in a folder (only each
    record's ``source`` differs); a prefix with nothing under it, a missing bucket and a missing annotation object are
    one line, exit 2; an object gone since the listing is a reported video, not a crash."""
    import json

    from data_prep.activitynet import main as activitynet
    from data_prep.decode import VideoError
    from data_prep.labels import Entry
    from data_prep.sources import VideoIndex, local_video
    from data_prep.synthetic import main as synthetic
    from sofnet import storage

    raw = tmp_path / "raw"
    assert synthetic(["--out", str(raw), "--videos", "6", "--classes", "3", "--min-duration", "3",
                      "--max-duration", "4"]) == 0
    upload_tree(raw / "videos", f"{bucket}/videos")
    storage.write_bytes(f"{bucket}/anno/activity_net.synthetic.json",
                        (raw / "activity_net.synthetic.json").read_bytes())
    common = ["--short-side", "96", "--shard-size", "2", "--no-ray", "--no-progress"]
    assert activitynet(common + ["--annotations", str(raw / "activity_net.synthetic.json"), "--videos",
                                 str(raw / "videos"), "--out", str(tmp_path / "disk")]) == 0
    common += ["--annotations", f"{bucket}/anno/activity_net.synthetic.json"]
    assert activitynet(common + ["--videos", f"{bucket}/videos", "--out", str(tmp_path / "bucket")]) == 0
    capsys.readouterr()
    disk, there = _members(tmp_path / "disk"), _members(tmp_path / "bucket")
    assert disk == there and sum(k.endswith(".json") for k in disk) == 6
    report = json.loads((tmp_path / "bucket" / "report.json").read_text())
    assert report["counts"]["written"] == 6 and report["counts"]["skipped"] == 0
    for bad, why in ((f"{bucket}/none", "no objects there"), (f"{other_bucket(bucket)}/videos", "")):
        assert activitynet(common + ["--videos", bad, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: --videos {bad}: ") and why in err[0], err
    common[-1] = f"{bucket}/anno/missing.json"
    assert activitynet(common + ["--videos", f"{bucket}/videos", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {bucket}/anno/missing.json: no such object"
    assert not (tmp_path / "x").exists()
    index = VideoIndex(f"{bucket}/videos")
    first = sorted(index.files)[0]
    assert index.find(Entry(id=first.rsplit("/", 1)[1].split(".")[0], subset="training")) == first
    with pytest.raises(VideoError, match="no such object"):
        with local_video(f"{bucket}/videos/gone.mp4"):
            pass
