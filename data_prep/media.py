"""Write video files with PyAV: the synthetic dataset's encoder and the tests' odd files.

Usage::

    from data_prep.media import index_frame, read_index, write_video
    write_video("clip.mkv", (index_frame(i) for i in range(50)), fps=10, start=2.0)  # stream starts at 2 s
    write_video("vfr.mkv", frames, times=[0.0, 0.04, 0.5, 0.55, 1.7])                   # variable frame rate
    write_video("clip.mpg", frames, fps=25, codec="mpeg1video", container="mpeg", audio="first")
    read_index(decoded_rgb)  # -> the number index_frame() drew, read back from a decoded (lossy) frame

Frames are ``uint8`` RGB arrays of one size (even width and height for yuv420p codecs).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 10


def index_frame(index: int, width: int = 80, height: int = 48) -> np.ndarray:
    """A frame that shows ``index`` as black/white stripes (bit 0 on the left), readable after lossy coding.

    Args:
        index: 0 .. 2**10 - 1.
        width: Frame width, a multiple of 10 (one stripe per bit).
        height: Frame height.

    Returns:
        ``(height, width, 3)`` uint8 RGB.
    """
    frame = np.full((height, width, 3), 128, np.uint8)
    stripe = width // INDEX_BITS
    for bit in range(INDEX_BITS):
        frame[:, bit * stripe : (bit + 1) * stripe] = 255 if (index >> bit) & 1 else 0
    return frame


def read_index(rgb: np.ndarray) -> int:
    """The number :func:`index_frame` drew, from a decoded (and possibly resized) RGB frame."""
    width = rgb.shape[1]
    columns = rgb.mean(axis=(0, 2))
    bits = 0
    for bit in range(INDEX_BITS):
        lo, hi = int(width * bit / INDEX_BITS), int(width * (bit + 1) / INDEX_BITS)
        middle = columns[lo + (hi - lo) // 4 : hi - (hi - lo) // 4]
        bits |= int(middle.mean() > 128) << bit
    return bits


_END = object()


def _ahead(frames: Iterable[np.ndarray], depth: int = 8) -> Iterator[np.ndarray]:
    """``frames`` in the same order, drawn in a thread up to ``depth`` frames ahead of the caller.

    The synthetic tasks render each frame with numpy while x264 encodes the one before: both release the GIL, so on two
    cores the two overlap (the benchmark task, profiled serially: rendering ~58 % of the time, encoding ~42 %). The
    frames and their order are unchanged, so are the bytes; a generator's random draws all happen before
    :func:`write_video` returns. An error in ``frames`` is raised here; closed early (a failed encode), the frames not
    yet begun are not drawn. One frame ahead instead of ``depth`` took ~12 % longer (60 benchmark videos).
    """
    source = iter(frames)
    with ThreadPoolExecutor(1, thread_name_prefix="write_video-frames") as pool:  # one thread: draws in order
        pending = deque(pool.submit(next, source, _END) for _ in range(depth))
        try:
            while (frame := pending.popleft().result()) is not _END:
                pending.append(pool.submit(next, source, _END))
                yield frame
        finally:
            pool.shutdown(cancel_futures=True)


def _audio_stream(container: av.container.OutputContainer, codec: str) -> av.audio.stream.AudioStream:
    stream = container.add_stream(codec, rate=48000 if codec != "aac" else 44100)
    stream.layout = "stereo"
    return stream


def _write_silence(
    container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float
) -> None:
    context = stream.codec_context
    size = context.frame_size or 1152
    planar = context.format.is_planar
    dtype = np.int16 if context.format.name.startswith("s16") else np.float32
    for start in range(0, int(context.sample_rate * seconds), size):
        samples = np.zeros((2, size) if planar else (1, 2 * size), dtype=dtype)
        frame = av.AudioFrame.from_ndarray(samples, format=context.format.name, layout="stereo")
        frame.sample_rate, frame.pts = context.sample_rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int = 10,
    codec: str = "libx264",
    container: str | None = None,
    times: Sequence[float] | None = None,
    start: float = 0.0,
    audio: str | None = None,
    gop: int | None = None,
    options: dict[str, str] | None = None,
    faststart: bool = False,
) -> Path:
    """Encode frames into a video file.

    Args:
        path: Output file; the container format follows its extension unless ``container`` is given.
        frames: RGB frames, all of one size.
        fps: Nominal frame rate (and the time base ``1/fps`` unless ``times`` asks for a finer one).
        codec: Video encoder (``libx264``, ``mpeg4``, ``mpeg2video``, ``mpeg1video``, ``mjpeg``...).
        container: FFmpeg muxer name (``mp4``, ``matroska``, ``avi``, ``mpeg``, ``mpegts``...).
        times: Presentation time of each frame in seconds (variable frame rate); default ``i / fps``.
        start: Added to every time: the stream starts at ``start`` seconds.
        audio: None, ``"after"`` (a silent audio stream after the video) or ``"first"`` (audio is stream 0).
        gop: Keyframe interval in frames (None: the encoder's default).
        options: More encoder options.
        faststart: For MP4, put the index (moov) at the front.

    Returns:
        ``path``.
    """
    path = Path(path)
    muxer_options = {"movflags": "+faststart"} if faststart else {}
    time_base = Fraction(1, 1000) if times is not None else Fraction(1, fps)
    audio_codec = "mp2" if (container or path.suffix.lstrip(".")) in ("mpeg", "mpg", "mpegts", "ts", "avi") else "aac"
    # closing(): a failed encode stops the frame thread now, not when the generator is collected
    with av.open(str(path), "w", format=container, options=muxer_options) as output, closing(_ahead(frames)) as ahead:
        sound = _audio_stream(output, audio_codec) if audio == "first" else None
        stream = None
        count = 0
        for index, rgb in enumerate(ahead):
            if stream is None:
                codec_options = dict(options or {})
                if codec == "libx264":
                    # x264's macroblock-tree rate control made the bytes depend on what the process had encoded
                    # before (seen: the same frames encoded 4 different ways in one process; 313 of the benchmark
                    # task's 768 videos differed between two `make bench-data` runs, and so did the shards and
                    # every result trained on them). Without it the same frames give the same bytes; costs ~1.5x
                    # the file size at the same crf.
                    codec_options.setdefault("mbtree", "0")
                if gop:
                    codec_options["g"] = str(gop)
                stream = output.add_stream(codec, rate=fps, options=codec_options)
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
                stream.codec_context.time_base = time_base
                stream.codec_context.thread_count = 1  # the same bytes on every run
                if audio == "after":
                    sound = _audio_stream(output, audio_codec)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            seconds = (times[index] if times is not None else index / fps) + start
            frame.pts = round(seconds / time_base)
            for packet in stream.encode(frame):
                output.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                output.mux(packet)
        if sound is not None:
            _write_silence(output, sound, count / fps if times is None else (times[-1] if times else 0.0) + 0.1)
    return path


def write_audio_only(path: str | Path, seconds: float = 2.0) -> Path:
    """A file with one silent AAC audio stream and no video (``.m4a``/``.mp4``)."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as output:
        _write_silence(output, _audio_stream(output, "aac"), seconds)
    return path


def truncate(path: str | Path, fraction: float, out: str | Path | None = None) -> Path:
    """Keep the first ``fraction`` of a file's bytes (in place, or into ``out``), like an interrupted download."""
    data = Path(path).read_bytes()
    target = Path(out or path)
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def patch_avi_frame_count(path: str | Path, frames: int) -> Path:
    """Make an AVI header lie: set the total frame count (``avih``) and the video stream length (``strh``).

    Args:
        path: An AVI file (changed in place).
        frames: The count to write (0 to make it absent).

    Returns:
        ``path``.
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    avih = data.find(b"avih")
    data[avih + 8 + 16 : avih + 8 + 20] = frames.to_bytes(4, "little")  # MainAVIHeader.dwTotalFrames
    strh = data.find(b"vids") - 8  # the video stream's "strh" chunk: id, size, then fccType "vids"
    assert data[strh : strh + 4] == b"strh", "no video stream header"
    data[strh + 8 + 32 : strh + 8 + 36] = frames.to_bytes(4, "little")  # AVIStreamHeader.dwLength
    path.write_bytes(bytes(data))
    return path
