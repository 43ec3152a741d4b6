"""Sample frames from a video by timestamp with PyAV and encode them as JPEG.

Usage::

    from data_prep.decode import sample_video
    video = sample_video("bikes.mp4", fps=1.0, min_frames=16, short_side=256, quality=90)
    video.timestamps  # seconds from the stream start of each stored frame, in time order
    video.jpegs       # one JPEG (bytes) per timestamp

How frames are chosen: the targets are the centres of the ``1/fps`` intervals, ``(k + 0.5) / fps`` seconds after
the video stream's own start time (``stream.start_time``, which is not always 0), for as long as the decoded stream
lasts. The frame stored for a target is the one on screen at that time: the last frame whose presentation time is
at or before it, so variable frame rate is handled naturally. The header's frame count and duration are never
trusted; the stream is demuxed to its real end.

Decoding only what is needed: packets are demuxed (cheap) but a group of pictures is decoded only if it holds a
frame that a target needs. When a keyframe packet arrives whose time is at or before the next target, the
undecoded packets before it are dropped, so at 1 fps a video with a keyframe every second or so decodes a small
part of its frames. When the next target is more than ``seek_gap`` seconds away (low ``fps``, explicit sparse
timestamps) and more than twice the longest keyframe interval seen so far, the container seeks (skipping the
reading too); a seek that lands behind what was read stops seeking for that video, and one that overshoots its
target makes the video decode again from the start without seeking, so a bad index costs time, never a wrong
frame.

Short videos (fewer samples than ``min_frames``): ``short="dense"`` (default) samples ``min_frames`` timestamps
evenly over the decoded duration instead, so a 5 s clip gives 16 distinct frames if it has them; a frame is
repeated only when the video holds fewer decodable frames than ``min_frames`` (the timestamps then repeat too).
``short="skip"`` raises :class:`VideoError` instead, and the video is reported, not written.

``fps="native"`` targets the stream's own average frame rate, ``(k + 0.5) / rate``: every frame of a constant-rate
video exactly once, as the official SoF-Net frame folders hold them. ``timeout`` bounds the wall-clock time of a
whole :func:`sample_video` call (see :mod:`data_prep.deadline`); a video over it raises ``VideoError("decode
timeout: ...")``. A FIFO or device given as the video file is opened like a file (and may block: the timeout
covers it); an empty regular file is reported without opening it.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import av

from data_prep.deadline import Deadline, DeadlineExceeded
from data_prep.sampler import Sampler, target_size  # noqa: F401  (target_size: part of this module's API)

log = logging.getLogger(__name__)

SHORT_POLICIES = ("dense", "skip")
NATIVE = "native"  # fps="native": the stream's own frame rate


class VideoError(Exception):
    """A video that cannot be written; ``str(error)`` is the reason that goes into ``report.json``."""


@dataclass
class SampledVideo:
    """Frames sampled from one video.

    Attributes:
        jpegs: One JPEG per sampled frame, in time order.
        timestamps: Presentation time of each stored frame, in seconds from the video stream's start.
        duration: Decoded duration in seconds (end of the last decoded frame).
        fps: Source frame rate (the stream's average rate, else packets per second).
        width: Width of the stored JPEGs.
        height: Height of the stored JPEGs.
        source_width: Width of the decoded frames.
        source_height: Height of the decoded frames.
        decoded_frames: Frames the decoder produced (fewer than the video holds when groups were skipped).
        decode_errors: Packets the decoder rejected (corrupt data); decoding went on after each.
        header_duration: Duration the container header claims, in seconds, or None.
        warnings: Things a user should know about a video that was written anyway (truncation, corrupt data).
    """

    jpegs: list[bytes] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    duration: float = 0.0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    source_width: int = 0
    source_height: int = 0
    decoded_frames: int = 0
    decode_errors: int = 0
    header_duration: float | None = None
    warnings: list[str] = field(default_factory=list)


class _Restart(Exception):
    """A seek overshot its target: decode again from the start, sequentially."""


def _decode(codec: av.CodecContext, packets: list[av.Packet | None], stats: dict[str, int]) -> Iterator[av.VideoFrame]:
    for packet in packets:
        try:
            yield from codec.decode(packet)
        except av.error.FFmpegError as error:  # a corrupt packet: skip it, keep decoding
            stats["errors"] += 1
            log.debug("decode error: %s", error)


def _sample_pass(
    container: av.container.InputContainer, sampler: Sampler, seek_gap: float, skip_packets: bool, result: SampledVideo
) -> float:
    """Demux the stream once, decoding only the groups of pictures that hold a needed frame.

    Returns:
        The decoded duration: end of the last decoded frame, in seconds from the stream start.

    Raises:
        VideoError: No frame could be decoded.
        _Restart: A seek landed after its target.
    """
    stream = container.streams.video[0]
    codec = stream.codec_context
    time_base = float(stream.time_base)
    start: float | None = stream.start_time * time_base if stream.start_time is not None else None
    stats = {"errors": 0, "frames": 0, "packets": 0, "seeks": 0}
    last = [0.0, 0.0]  # presentation time and duration of the last decoded frame

    def feed(packets: list[av.Packet | None]) -> None:
        nonlocal start
        for frame in _decode(codec, packets, stats):
            if frame.pts is None:
                continue
            if start is None:
                start = frame.pts * time_base
            rel = frame.pts * time_base - start
            stats["frames"] += 1
            last[:] = [rel, (frame.duration or 0) * time_base]
            sampler.add(rel, frame)

    buffer: list[av.Packet | None] = []
    position = -math.inf  # demux time (dts) of the last packet read
    seeking = seek_gap > 0 and stream.start_time is not None
    sought: float | None = None  # the target of a seek whose landing is not checked yet
    last_sought = -math.inf  # never seek twice for one target: the second would land at the same keyframe
    last_key: float | None = None  # time of the last keyframe packet read
    key_interval: float | None = None  # longest distance between keyframes read so far
    packets = container.demux(stream)
    while (target := sampler.target()) is not None:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as error:  # truncated or corrupt container: keep what was read
            result.warnings.append(f"demux stopped early: {error}")
            break
        if packet.size == 0 and packet.pts is None and packet.dts is None:
            continue  # the demuxer's end-of-stream marker
        stats["packets"] += 1
        if start is None:
            first = packet.dts if packet.dts is not None else packet.pts
            start = first * time_base if first is not None else None
        base = start or 0.0
        dts = packet.dts * time_base - base if packet.dts is not None else None
        pts = packet.pts * time_base - base if packet.pts is not None else None
        if sought is not None:
            landed = pts if pts is not None else dts
            if landed is None or landed > sought + 1e-6:
                raise _Restart(f"seek to {sought:.3f}s landed at {landed}")
            seeking = landed > position  # a seek that went back behind what was read does not pay here
            sought = None
        if dts is not None:
            position = dts
        if packet.is_keyframe and pts is not None:
            if last_key is not None and pts > last_key:
                key_interval = max(key_interval or 0.0, pts - last_key)
            last_key = pts
        if skip_packets and packet.is_keyframe and pts is not None and pts <= target:
            buffer = []  # the frame on screen at the target is this keyframe or a later one
        buffer.append(packet)
        if dts is None or pts is None or dts > target:
            feed(buffer)  # every later packet shows a later frame: decode what the target needs
            buffer = []
        elif (
            seeking
            and key_interval is not None  # a seek pays only if a keyframe is likely between here and the target
            and target - position > max(seek_gap, 2 * key_interval)
            and target > last_sought
        ):
            container.seek(int((base + target) / time_base), stream=stream, backward=True)
            codec.flush_buffers()
            buffer, sought, last_sought, packets = [], target, target, container.demux(stream)
            stats["seeks"] += 1
    feed([*buffer, None])
    if stats["frames"] == 0:
        raise VideoError("no decodable video frames")
    frame_time = last[1] or (1.0 / float(stream.average_rate) if stream.average_rate else 0.0)
    end = last[0] + frame_time
    sampler.finish(end)
    result.decoded_frames += stats["frames"]
    result.decode_errors += stats["errors"]
    if stream.average_rate:
        result.fps = float(stream.average_rate)
    elif end > 0:
        result.fps = stats["packets"] / end
    log.debug("%s: %d frames decoded, %d errors, %d seeks", container.name, stats["frames"], stats["errors"],
              stats["seeks"])
    return end


def decoder_versions() -> dict:
    """PyAV's version and its FFmpeg libraries' (``{"pyav": "14.2.0", "ffmpeg": {"libavcodec": "61.19.100"}}``)."""
    libraries = {name: ".".join(map(str, version)) for name, version in sorted(av.library_versions.items())}
    return {"pyav": av.__version__, "ffmpeg": libraries}


def _open(path: str, timeout: float | None = None) -> av.container.InputContainer:
    """Open a file for decoding, or raise :class:`VideoError` with a reason a user can act on."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise VideoError(f"missing or unreadable file: {error.strerror}") from None
    if stat.S_ISREG(info.st_mode) and info.st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore", timeout=timeout)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise VideoError(f"not a readable media file: {getattr(error, 'strerror', None) or error}") from None
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        container.close()
        raise VideoError(f"no video stream: the file has {', '.join(kinds)}")
    return container


def _native_rate(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        raise VideoError("no frame rate in the header for --fps native: give a number")
    return float(rate)


def sample_frames(
    path: str,
    fps: float | str = 1.0,
    timestamps: Sequence[float] | None = None,
    short_side: int = 256,
    quality: int = 90,
    seek_gap: float = 8.0,
    skip_packets: bool = True,
    threads: int = 1,
    timeout: float | None = None,
) -> SampledVideo:
    """Decode one video and keep the frames on screen at the wanted times.

    Args:
        path: Video file (any container and codec FFmpeg reads); the first video stream is used, whatever its index.
        fps: Targets every ``1/fps`` seconds (interval centres) over the whole video; ``"native"``: the stream's
            average frame rate; ignored with ``timestamps``.
        timestamps: Explicit target times in seconds from the stream start, instead of ``fps``.
        short_side: Resize so that the shorter side has this many pixels (0: keep the size).
        quality: JPEG quality, 1-100.
        seek_gap: Seek when the next target is more than this many seconds ahead (0: never seek).
        skip_packets: Drop undecoded packets before a keyframe that precedes the next target.
        threads: Decoder threads (1 matches one Ray CPU per task).
        timeout: PyAV's limit for the open and for each read, in seconds (None: wait).

    Returns:
        The sampled frames and what was learnt about the stream.

    Raises:
        VideoError: The file is missing, empty, not media, has no video stream or no decodable frame.
    """
    for attempt in range(2):
        result = SampledVideo()
        container = _open(path, timeout)
        try:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = threads
            if stream.duration is not None:
                result.header_duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:  # some muxers (Matroska) store the end time there
                result.header_duration = (container.duration - (container.start_time or 0)) / av.time_base
            rate = _native_rate(stream) if fps == NATIVE and timestamps is None else fps
            sampler = Sampler(rate, timestamps, short_side, quality)
            try:
                gap = seek_gap if attempt == 0 else 0.0
                result.duration = _sample_pass(container, sampler, gap, skip_packets, result)
            except _Restart as restart:
                log.info("%s: %s; decoding again without seeking", path, restart)
                continue
        finally:
            container.close()
        result.jpegs, result.timestamps = sampler.jpegs, sampler.timestamps
        result.width, result.height = sampler.size or (0, 0)
        result.source_width, result.source_height = sampler.source_size
        if result.decode_errors:
            result.warnings.append(f"{result.decode_errors} corrupt packets skipped")
        claimed = result.header_duration
        if timestamps is None and claimed and result.duration < 0.9 * claimed - 0.5:
            result.warnings.append(f"decoded {result.duration:.2f}s of the {claimed:.2f}s in the header (truncated?)")
        return result
    raise AssertionError("unreachable: the second attempt never seeks")


def sample_video(
    path: str,
    fps: float | str = 1.0,
    min_frames: int = 16,
    short: str = "dense",
    short_side: int = 256,
    quality: int = 90,
    seek_gap: float = 8.0,
    threads: int = 1,
    timeout: float | None = None,
) -> SampledVideo:
    """Sample a video at ``fps``, applying the short-video policy (see the module docstring).

    Args:
        path: Video file.
        fps: Sampling rate in frames per second of video time, or ``"native"``.
        min_frames: Fewest frames a stored video may have.
        short: ``"dense"``: sample ``min_frames`` even timestamps instead (repeats only if the video has fewer
            decodable frames); ``"skip"``: raise :class:`VideoError`.
        short_side: Shorter side of the stored frames (0: keep).
        quality: JPEG quality.
        seek_gap: See :func:`sample_frames`.
        threads: Decoder threads.
        timeout: Wall-clock seconds for the whole call (None: no limit), see :mod:`data_prep.deadline`.

    Returns:
        At least ``min_frames`` frames.

    Raises:
        VideoError: The video cannot be decoded, is too short under ``short="skip"``, or took over ``timeout``.
    """
    if short not in SHORT_POLICIES:
        raise ValueError(f"short must be one of {SHORT_POLICIES}, not {short!r}")
    options = {"short_side": short_side, "quality": quality, "seek_gap": seek_gap, "threads": threads}
    try:
        with Deadline(timeout) as deadline:
            return _sample_with_policy(path, fps, min_frames, short, {**options, "timeout": deadline.io_timeout})
    except DeadlineExceeded as error:
        raise VideoError(f"decode timeout: {error} (a stalled read or a hung decoder; --decode-timeout)") from None


def _sample_with_policy(path: str, fps: float | str, min_frames: int, short: str, options: dict) -> SampledVideo:
    video = sample_frames(path, fps=fps, **options)
    if len(video.jpegs) >= min_frames:
        return video
    if short == "skip" or video.duration <= 0:
        rate = fps if isinstance(fps, str) else f"{fps:g}"
        raise VideoError(f"too short: {len(video.jpegs)} frames at {rate} fps < --min-frames {min_frames}")
    step = video.duration / min_frames
    dense = sample_frames(path, timestamps=[(k + 0.5) * step for k in range(min_frames)], **options)
    dense.duration, dense.header_duration = video.duration, video.header_duration
    dense.warnings = video.warnings + [w for w in dense.warnings if w not in video.warnings]
    if len(dense.jpegs) < min_frames:  # cannot happen with a non-empty list of targets inside the video
        raise VideoError(f"too short: {len(dense.jpegs)} frames < --min-frames {min_frames}")
    return dense
