"""data_prep.decode on real encoded files: timestamps, odd containers, broken files, short videos."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from data_prep.decode import VideoError, sample_frames, sample_video, target_size
from data_prep.media import index_frame, patch_avi_frame_count, read_index, truncate, write_audio_only, write_video

N = 80  # frames of the made clips: 8 s at 10 fps, 3.2 s at 25 fps
VFR_TIMES = [0, 0.04, 0.5, 0.55, 1.7, 1.75, 1.8, 2.9, 3.0, 3.05, 3.1, 3.9, 4.6, 4.7, 5.5, 5.6, 6.4, 7.0, 7.2, 8.0]

CLIPS = {  # name: write_video arguments
    "h264.mp4": {"fps": 10},
    "start2s.mkv": {"fps": 10, "start": 2.0},
    "start1.5s.mp4": {"fps": 10, "start": 1.5},
    "audio_first.mp4": {"fps": 10, "audio": "first"},
    "mpeg4.avi": {"fps": 10, "codec": "mpeg4", "container": "avi"},
    "mpeg1_audio_first.mpg": {"fps": 25, "codec": "mpeg1video", "container": "mpeg", "audio": "first"},
    "mpeg2_audio.ts": {"fps": 25, "codec": "mpeg2video", "container": "mpegts", "audio": "after"},
    "vfr.mkv": {"times": VFR_TIMES},
}


def indices(jpegs: list[bytes]) -> list[int]:
    return [read_index(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))) for data in jpegs]


def on_screen(times: list[float], t: float) -> int:
    """Index of the frame shown at t: the last one that starts at or before t (the first if none)."""
    return max([i for i, start in enumerate(times) if start <= t + 1e-9] or [0])


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    made = {}
    for name, kwargs in CLIPS.items():
        count = len(VFR_TIMES) if "times" in kwargs else N
        made[name] = write_video(folder / name, [index_frame(i) for i in range(count)], **kwargs)
    return made


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_each_sample_is_the_frame_on_screen_at_its_time(clips: dict[str, Path], name: str) -> None:
    kwargs = CLIPS[name]
    fps = kwargs.get("fps", 10)
    times = VFR_TIMES if "times" in kwargs else [i / fps for i in range(N)]
    video = sample_frames(str(clips[name]), fps=1.0, short_side=0)
    duration = times[-1] + (0.1 if "times" in kwargs else 1 / fps)
    assert video.duration == pytest.approx(duration, abs=0.05)
    targets = [k + 0.5 for k in range(int(duration + 0.5))]  # interval centres, stream start = 0 whatever it is
    assert len(video.jpegs) == len(targets)
    assert indices(video.jpegs) == [on_screen(times, t) for t in targets]
    assert video.timestamps == pytest.approx([times[on_screen(times, t)] for t in targets], abs=1e-3)
    assert (video.width, video.height) == (80, 48)


def test_non_zero_start_time_is_really_in_the_files(clips: dict[str, Path]) -> None:
    for name, start in (("start2s.mkv", 2.0), ("start1.5s.mp4", 1.5)):
        with av.open(str(clips[name])) as container:
            stream = container.streams.video[0]
            assert float(stream.start_time * stream.time_base) == pytest.approx(start)


def test_first_stream_audio_is_really_audio(clips: dict[str, Path]) -> None:
    for name in ("audio_first.mp4", "mpeg1_audio_first.mpg"):
        with av.open(str(clips[name])) as container:
            assert container.streams[0].type == "audio" and len(container.streams.video) == 1


def test_header_frame_count_is_not_trusted(clips: dict[str, Path], tmp_path: Path) -> None:
    honest = sample_frames(str(clips["mpeg4.avi"]), short_side=0)
    for count in (9999, 0):  # a wrong count and an absent one
        liar = tmp_path / f"count{count}.avi"
        liar.write_bytes(clips["mpeg4.avi"].read_bytes())
        patch_avi_frame_count(liar, count)
        with av.open(str(liar)) as container:
            assert container.streams.video[0].frames == count
        video = sample_frames(str(liar), short_side=0)
        assert video.timestamps == honest.timestamps and video.jpegs == honest.jpegs
    with av.open(str(clips["mpeg1_audio_first.mpg"])) as container:  # MPEG-PS: no frame count at all
        assert container.streams.video[0].frames == 0
    assert len(sample_frames(str(clips["mpeg1_audio_first.mpg"])).jpegs) == 3  # 3.2 s at 1 fps


@pytest.mark.parametrize("fps, seek_gap", [(1.0, 8.0), (0.25, 1.0), (0.1, 1.0), (3.0, 8.0)])
def test_skipping_and_seeking_give_the_frames_of_a_full_decode(shared_dir: Path, fps: float, seek_gap: float) -> None:
    for clip in sorted((shared_dir / "videos").glob("*.mp4")):
        fast = sample_frames(str(clip), fps=fps, seek_gap=seek_gap)
        full = sample_frames(str(clip), fps=fps, seek_gap=0, skip_packets=False)
        assert fast.timestamps == full.timestamps and fast.jpegs == full.jpegs
        assert fast.decoded_frames <= full.decoded_frames
    bikes = str(shared_dir / "videos" / "bikes.mp4")  # keyframes every 1-2.5 s: most frames are never decoded
    assert sample_frames(bikes, fps=0.25, seek_gap=1.0).decoded_frames < 0.5 * 250


def test_small_gop_decodes_a_fraction_of_the_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "gop5.mp4", [index_frame(i) for i in range(200)], fps=10, gop=5)
    fast = sample_frames(str(path), fps=1.0, short_side=0)
    assert indices(fast.jpegs) == [10 * k + 5 for k in range(20)]
    assert fast.decoded_frames < 120  # a 5-frame group per sample at most, not all 200 frames


def test_shared_clips(shared_dir: Path) -> None:
    expected = {"bikes.mp4": (10, 602, 256), "carphone_distorted.mp4": (4, 313, 256), "bigbuckbunny.mp4": (5, 455, 256)}
    for name, (count, width, height) in expected.items():
        video = sample_frames(str(shared_dir / "videos" / name))
        assert (len(video.jpegs), video.width, video.height) == (count, width, height)
        assert all(0 <= t < video.duration for t in video.timestamps)
        assert Image.open(io.BytesIO(video.jpegs[-1])).size == (width, height)


def test_short_videos_dense_or_skip(tmp_path: Path, shared_dir: Path) -> None:
    tiny = write_video(tmp_path / "tiny.mp4", [index_frame(i) for i in range(6)], fps=10)  # 0.6 s, 6 frames
    dense = sample_video(str(tiny), fps=1.0, min_frames=16, short_side=0)
    assert len(dense.jpegs) == 16 and sorted(set(indices(dense.jpegs))) == list(range(6))  # every frame, repeated
    assert dense.timestamps == sorted(dense.timestamps)
    with pytest.raises(VideoError, match="too short"):
        sample_video(str(tiny), fps=1.0, min_frames=16, short="skip")
    bikes = sample_video(str(shared_dir / "videos" / "bikes.mp4"), fps=1.0, min_frames=16)
    assert len(bikes.jpegs) == 16 and len(set(bikes.timestamps)) == 16  # 10 s has 250 frames: all distinct


def test_broken_files_raise_video_error_with_a_reason(tmp_path: Path, shared_dir: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    write_audio_only(tmp_path / "audio.m4a")
    truncate(write_video(tmp_path / "moov_last.mp4", [index_frame(i) for i in range(N)]), 0.5)
    cases = {
        "missing.mp4": "missing or unreadable file",
        "empty.mp4": "empty file",
        "text.mp4": "not a readable media file",
        "audio.m4a": "no video stream",
        "moov_last.mp4": "not a readable media file",
    }
    for name, reason in cases.items():
        with pytest.raises(VideoError) as error:
            sample_video(str(tmp_path / name))
        assert str(error.value).startswith(reason), (name, str(error.value))
    half = truncate(shared_dir / "videos" / "carphone_distorted.mp4", 0.01, tmp_path / "carphone_1pct.mp4")
    with pytest.raises(VideoError):
        sample_video(str(half))


def test_truncated_and_corrupt_files_keep_what_decodes(tmp_path: Path, shared_dir: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [index_frame(i) for i in range(N)]
    for frame in frames:  # noise below the stripes: every frame costs bytes, so the cut falls mid-stream
        frame[32:] = rng.integers(0, 256, frame[32:].shape, dtype=np.uint8)
    cut = truncate(write_video(tmp_path / "faststart.mp4", frames, faststart=True, gop=10), 0.6)
    video = sample_frames(str(cut), short_side=0)
    assert 2 <= len(video.jpegs) < 8 and indices(video.jpegs) == [10 * k + 5 for k in range(len(video.jpegs))]
    assert any("truncated" in warning for warning in video.warnings)
    damaged = tmp_path / "bikes_corrupt.mp4"
    data = bytearray((shared_dir / "videos" / "bikes.mp4").read_bytes())
    data[200_000:260_000] = np.random.default_rng(0).integers(0, 256, 60_000, dtype=np.uint8).tobytes()
    damaged.write_bytes(bytes(data))
    video = sample_video(str(damaged))  # corrupt packets are skipped, the rest decodes
    assert len(video.jpegs) >= 16 and video.duration == pytest.approx(10.0, abs=0.1)


def test_target_size() -> None:
    assert target_size(640, 272, 256) == (602, 256)
    assert target_size(272, 640, 256) == (256, 602)
    assert target_size(176, 144, 256) == (313, 256)
    assert target_size(640, 272, 0) == (640, 272)
