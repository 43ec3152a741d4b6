"""Bad input to the three data_prep commands: one line on stderr naming the flag or file, exit 2, nothing written.

Table-driven: every case runs the real command (``python -m data_prep.<x>``) in a subprocess on real files (the
annotation formats written here byte by byte, the shared clip as the video). Cases caught before work starts
must leave no output folder, no shard, no temporary file behind; the two "another run" cases must leave the
earlier run's shards byte for byte as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from data_prep_helpers import run_module

GOOD_JSON = {"version": "VERSION 1.3", "taxonomy": [], "database": {
    "vidA": {"subset": "training", "duration": 10.0, "resolution": "", "url": "",
             "annotations": [{"segment": [1.0, 5.0], "label": "Biking"}]}}}


def _json(database: object, **extra: object) -> str:
    return json.dumps({"version": "VERSION 1.3", "taxonomy": [], "database": database, **extra})


FILES: dict[str, str | bytes] = {  # name -> content, written in the case folder
    "good.json": json.dumps(GOOD_JSON),
    "other.json": json.dumps({**GOOD_JSON, "database": {"vidA": {**GOOD_JSON["database"]["vidA"], "annotations": [
        {"segment": [2.0, 6.0], "label": "Biking"}]}}}),
    "broken.json": '{"version": "VERSION 1.3", "database": {"vidA": ',
    "latin1.json": '{"database": {"caf\xe9": {"subset": "training"}}}'.encode("latin-1"),
    "empty.json": "",
    "nodatabase.json": json.dumps({"version": "VERSION 1.3", "results": {}}),
    "listdatabase.json": json.dumps({"database": [{"subset": "training"}]}),
    "nosubset.json": _json({"vidA": {"duration": 10.0, "annotations": [{"segment": [1, 5], "label": "Biking"}]}}),
    "segx.json": _json({"vidA": {"subset": "training", "annotations": [{"segment": ["x", 5], "label": "Biking"}]}}),
    "nolabel.json": _json({"vidA": {"subset": "training", "annotations": [{"segment": [1, 5]}]}}),
    "taxonomy.json": _json({"vidA": {"subset": "training", "annotations": [{"segment": [1, 5], "label": "Biking"}]}},
                           taxonomy=[{"nodeName": "Root", "parentName": None},
                                     {"nodeName": "Running", "parentName": "Root"}]),
    "twice.json": '{"database": {"vidA": {"subset": "training"}, "vidA": {"subset": "validation"}}}',
    "classInd.txt": "0,Biking\n1,Running\n",
    "classInd_1based.txt": "1,Biking\n2,Running\n",
    "classInd_dup.txt": "0,Biking\n1,Running\n2,Biking\n",
    "actnet_train_split.txt": "vidA,250,0\n",
    "actnet_bad_split.txt": "vidA,250,0\nvidB,abc,1\n",
    "anet_train_video.txt": "v_vidA 250 0\nv_vidB\n",
    "labels.txt": "Biking\nRunning\n",
    "sports_train.csv": "train/vidA 250 0\r\ntrain/vidB 250\r\n",
    "sports_nocount.csv": "train/vidA 250 0\r\ntrain/vidB\r\n",
    "clips.csv": "path,label,start,end\nvidA.mp4,Biking,1,5\n",
    "clips_badtime.csv": "path,label,start,end\nvidA.mp4,Biking,1,5\nvidA.mp4,Biking,x,9\n",
    "clips_3fields.csv": "vidA.mp4,Biking,1\n",
    "a_file": "not a folder\n",
}

ANET = "data_prep.activitynet"
S1M = "data_prep.sports1m"
SYN = "data_prep.synthetic"
VID = ["--videos", "{videos}"]
OUT = ["--out", "{out}"]
GOOD = ["--annotations", "{d}/good.json", *VID, *OUT]
LIST = ["--list", "{d}/clips.csv", "--classes", "{d}/labels.txt", *VID, *OUT]
SYNTH = ["--out", "{out}", "--videos", "2", "--classes", "2"]

# id: (module, arguments, text the one line must contain); "{out}" is a path that must not exist afterwards
CASES: dict[str, tuple[str, list[str], str]] = {
    "anet fps negative": (ANET, [*GOOD, "--fps", "-1"], "--fps: must be > 0"),
    "anet fps zero": (ANET, [*GOOD, "--fps", "0"], "--fps: must be > 0"),
    "anet fps nan": (ANET, [*GOOD, "--fps", "nan"], "--fps: must be a finite number"),
    "anet fps word": (ANET, [*GOOD, "--fps", "fast"], "--fps: expected frames per second or 'native'"),
    "anet shard size zero": (ANET, [*GOOD, "--shard-size", "0"], "--shard-size: must be >= 1"),
    "anet short side negative": (ANET, [*GOOD, "--short-side", "-8"], "--short-side: must be >= 0"),
    "anet quality zero": (ANET, [*GOOD, "--quality", "0"], "--quality: must be >= 1"),
    "anet quality 101": (ANET, [*GOOD, "--quality", "101"], "--quality: must be <= 100"),
    "anet min frames zero": (ANET, [*GOOD, "--min-frames", "0"], "--min-frames: must be >= 1"),
    "anet decode timeout zero": (ANET, [*GOOD, "--decode-timeout", "0"], "--decode-timeout: must be > 0"),
    "anet num cpus zero": (ANET, [*GOOD, "--num-cpus", "0"], "--num-cpus: must be >= 1"),
    "anet unknown subset": (ANET, [*GOOD, "--subsets", "bogus"], "--subsets: no video of"),
    "anet no such videos": (ANET, ["--annotations", "{d}/good.json", "--videos", "{d}/missing", *OUT],
                            "--videos {d}/missing: no such folder"),
    "anet videos is a file": (ANET, ["--annotations", "{d}/good.json", "--videos", "{d}/a_file", *OUT],
                              "--videos {d}/a_file: not a folder"),
    "anet out under a file": (ANET, [*GOOD[:-2], "--out", "{d}/a_file/shards"], "--out {d}/a_file/shards"),
    "anet videos without files": (ANET, ["--annotations", "{d}/good.json", "--videos", "{d}/empty_videos", *OUT],
                                  "none of the 1 annotated videos has a file"),
    "anet annotations missing": (ANET, ["--annotations", "{d}/nope.json", *VID, *OUT], "{d}/nope.json: no such file"),
    "anet not json": (ANET, ["--annotations", "{d}/broken.json", *VID, *OUT], "{d}/broken.json: not JSON"),
    "anet not utf-8": (ANET, ["--annotations", "{d}/latin1.json", *VID, *OUT], "{d}/latin1.json: line 1: not UTF-8"),
    "anet empty file": (ANET, ["--annotations", "{d}/empty.json", *VID, *OUT], "{d}/empty.json: empty file"),
    "anet no database": (ANET, ["--annotations", "{d}/nodatabase.json", *VID, *OUT], 'no "database"'),
    "anet database a list": (ANET, ["--annotations", "{d}/listdatabase.json", *VID, *OUT],
                             '"database" is not an object'),
    "anet video without subset": (ANET, ["--annotations", "{d}/nosubset.json", *VID, *OUT],
                                  "{d}/nosubset.json: video 'vidA': no \"subset\""),
    "anet segment x": (ANET, ["--annotations", "{d}/segx.json", *VID, *OUT],
                       "{d}/segx.json: video 'vidA': annotation 0: segment ['x', 5]"),
    "anet annotation without label": (ANET, ["--annotations", "{d}/nolabel.json", *VID, *OUT],
                                      "video 'vidA': annotation 0: label None"),
    "anet label outside taxonomy": (ANET, ["--annotations", "{d}/taxonomy.json", *VID, *OUT],
                                    "label 'Biking' is not a class of the file's taxonomy"),
    "anet duplicate key": (ANET, ["--annotations", "{d}/twice.json", *VID, *OUT], "key 'vidA' appears twice"),
    "anet list without classes": (ANET, ["--annotations", "{d}/actnet_train_split.txt", *VID, *OUT],
                                  "actnet_train_split.txt: a video list needs its class list: give --classes"),
    "anet split frame count": (ANET, ["--annotations", "{d}/actnet_bad_split.txt", "--classes", "{d}/classInd.txt",
                                      *VID, *OUT], "actnet_bad_split.txt: line 2: frame count 'abc'"),
    "anet mmaction no count": (ANET, ["--annotations", "{d}/anet_train_video.txt", "--classes",
                                      "{d}/classInd.txt", *VID, *OUT], "anet_train_video.txt: line 2: no frame count"),
    "anet classInd 1-based": (ANET, ["--annotations", "{d}/actnet_train_split.txt", "--classes",
                                     "{d}/classInd_1based.txt", *VID, *OUT], "classInd_1based.txt: class ids must be"),
    "anet classInd duplicate": (ANET, ["--annotations", "{d}/actnet_train_split.txt", "--classes",
                                       "{d}/classInd_dup.txt", *VID, *OUT],
                                "classInd_dup.txt: line 3: duplicate class name 'Biking'"),
    "s1m list without classes": (S1M, ["--list", "{d}/sports_train.csv", *VID, *OUT], "sports_train.csv: a video list"),
    "s1m list no frame count": (S1M, ["--list", "{d}/sports_nocount.csv", "--classes", "{d}/labels.txt", *VID, *OUT],
                                "sports_nocount.csv: line 2: no frame count"),
    "s1m csv without classes": (S1M, ["--list", "{d}/clips.csv", *VID, *OUT],
                                "clips.csv: label 'Biking' (line 2) has no class list"),
    "s1m csv time x": (S1M, ["--list", "{d}/clips_badtime.csv", "--classes", "{d}/labels.txt", *VID, *OUT],
                       "clips_badtime.csv: line 3: start/end 'x', '9' are not seconds"),
    "s1m csv three fields": (S1M, ["--list", "{d}/clips_3fields.csv", "--classes", "{d}/labels.txt", *VID, *OUT],
                             "clips_3fields.csv: line 1: expected 'path,label'"),
    "s1m quality word": (S1M, [*LIST, "--quality", "high"], "--quality: invalid int value: 'high'"),
    "s1m missing flag": (S1M, ["--list", "{d}/clips.csv", *OUT], "the following arguments are required: --videos"),
    "s1m classes not utf-8": (S1M, ["--list", "{d}/clips.csv", "--classes", "{d}/latin1.json", *VID, *OUT],
                              "latin1.json: line 1: not UTF-8"),
    "syn no videos": (SYN, [*SYNTH[:2], "--videos", "0"], "--videos: must be >= 1"),
    "syn no classes": (SYN, [*SYNTH[:4], "--classes", "0"], "--classes: must be >= 1"),
    "syn durations inverted": (SYN, [*SYNTH, "--min-duration", "5", "--max-duration", "2"],
                               "--max-duration: must be >= 5"),
    "syn out under a file": (SYN, ["--out", "{d}/a_file/data", "--videos", "2"], "--out {d}/a_file/data"),
    "syn shards under a file": (SYN, [*SYNTH, "--shards", "{d}/a_file/shards"], "--shards {d}/a_file/shards"),
    "syn fps zero": (SYN, [*SYNTH, "--shards", "{out}/shards", "--fps", "0"], "--fps: must be > 0"),
}
REUSE_CASES: dict[str, tuple[list[str], str]] = {  # the same --out as a finished run, something else asked
    "other parameters": ([*GOOD[:-2], "--out", "{reuse}", "--fps", "2"], "other parameters: fps 1.0 -> 2.0"),
    "other annotations": (["--annotations", "{d}/other.json", *VID, "--out", "{reuse}"],
                          "other videos or annotations in training"),
}


def run_command(module: str, args: list[str], folder: Path) -> subprocess.CompletedProcess:
    names = {"d": str(folder), "videos": str(folder / "videos"), "out": str(folder / "out"),
             "reuse": str(folder / "reuse")}
    return run_module(module, *[arg.format(**names) for arg in args], "--no-ray", "--no-progress", timeout=120)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    for name, content in FILES.items():
        (root / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    (root / "videos").mkdir()
    (root / "empty_videos").mkdir()
    os.symlink(shared_dir / "videos" / "bikes.mp4", root / "videos" / "v_vidA.mp4")
    first = run_command(ANET, [*GOOD[:-2], "--out", "{reuse}", "--short-side", "32"], root)
    assert first.returncode == 0, first.stderr
    return root


def assert_one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0], (expected, lines[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_nothing_is_written(folder: Path, case: str) -> None:
    module, args, expected = CASES[case]
    before = snapshot(folder)
    result = run_command(module, args, folder)
    assert_one_line(result, expected.format(d=folder))
    assert not (folder / "out").exists()
    assert snapshot(folder) == before  # no shard, tmp or probe file anywhere, the earlier run untouched
    assert not list(folder.rglob("*.tmp")) and not list(folder.rglob(".data_prep-probe-*"))


@pytest.mark.parametrize("case", sorted(REUSE_CASES))
def test_another_run_into_the_same_out_is_refused(folder: Path, case: str) -> None:
    args, expected = REUSE_CASES[case]
    before = snapshot(folder / "reuse")
    assert any(name.endswith(".tar") for name in before)
    result = run_command(ANET, args, folder)
    assert_one_line(result, expected)
    assert f"--out {folder / 'reuse'}" in result.stderr and "--overwrite" in result.stderr
    assert snapshot(folder / "reuse") == before


def test_the_same_run_again_resumes_and_overwrite_replaces(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [*GOOD[:-2], "--out", str(out), "--short-side", "32"]
    assert run_command(ANET, args, folder).returncode == 0
    shard = out / "training-000000.tar"
    first = shard.stat().st_mtime_ns
    again = run_command(ANET, args, folder)
    assert again.returncode == 0 and "0 videos decoded in this run" in again.stdout, again.stderr
    assert shard.stat().st_mtime_ns == first
    replaced = run_command(ANET, [*args, "--fps", "2", "--overwrite"], folder)
    assert replaced.returncode == 0, replaced.stderr
    assert "--overwrite: deleting 1 shards of another run" in replaced.stderr
    assert json.loads((out / "manifest.json").read_text())["params"]["fps"] == 2.0
