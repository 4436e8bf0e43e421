"""Reading audiovisual clips (mp4 and friends) with PyAV.

Real audiovisual corpora such as LRW ship one mp4 per clip with the face video and the audio
track muxed together. These helpers give the rest of avbench what it needs from such a file:
the audio as validated-ready 16 kHz mono float32, the frames as uint8 arrays, and the header facts
(frame count, rate, size) that preparers check without decoding every frame.

Every failure raises an error that names the file and says how to fix it, like bench.data.audio does.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import av
import numpy as np

from bench.data.audio import TARGET_SAMPLE_RATE, AudioError

Crop = tuple[int, int, int, int]


class VideoError(AudioError):
    """A clip whose video cannot be used. The message names the file and the fix.

    It subclasses AudioError on purpose: a clip with a broken video stream is a bad clip just like
    one with broken audio, so the preparers' bad-media policy (BadAudioLog) and the CLI's error
    printing treat both the same way.
    """


def _open(path: str | Path, kind: type[AudioError]) -> Any:
    """Open a container for reading, turning missing/corrupt files into `kind` errors."""
    path = Path(path)
    if not path.is_file():
        raise kind(f"{path}: no such file. Check the path, or re-run the preparer.")
    try:
        return av.open(str(path), mode="r")
    except Exception as exc:  # PyAV raises FFmpegError subclasses, OSError or ValueError
        raise kind(f"{path}: cannot be opened as a media file ({exc}). "
                   "Re-download or re-encode the clip, or remove it.") from exc


def _stream_seconds(stream: Any, container: Any) -> float | None:
    """Duration of a stream from the header, falling back to the container's duration."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration) / av.time_base
    return None


def audio_track_length(path: str | Path, target_sr: int = TARGET_SAMPLE_RATE) -> int | None:
    """Number of samples `decode_audio_track(path, target_sr)` returns, from the header only.

    None when the header gives no duration. Preparers use it to tell whether an already extracted
    wav is complete without decoding the clip again.
    """
    with _open(path, AudioError) as container:
        if not container.streams.audio:
            raise AudioError(f"{path}: the file has no audio stream. "
                             "Use a copy of the clip that includes its sound track, or remove it.")
        seconds = _stream_seconds(container.streams.audio[0], container)
    return None if seconds is None else int(round(seconds * target_sr))


def decode_audio_track(path: str | Path, target_sr: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream to float32 mono at `target_sr`.

    FFmpeg's resampler does the mixing and rate conversion in one pass, so any codec/layout/rate
    the container holds comes out the same. AAC encoders pad the last frame; the result is cut to
    the stream duration from the header so that a clip's length does not depend on the codec's
    frame size. The waveform is not validated here (silence/NaN checks belong to the caller's
    bad-audio policy, see bench.data.prepare.common.probe_audio).
    """
    path = Path(path)
    with _open(path, AudioError) as container:
        if not container.streams.audio:
            raise AudioError(f"{path}: the file has no audio stream. "
                             "Use a copy of the clip that includes its sound track, or remove it.")
        stream = container.streams.audio[0]
        seconds = _stream_seconds(stream, container)
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=target_sr)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush the resampler's delay line
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise AudioError(f"{path}: the audio stream is corrupt ({exc}). "
                             "Re-download or re-encode the clip, or remove it.") from exc
    wav = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if seconds is not None:
        wav = wav[: int(round(seconds * target_sr))]
    return wav


def video_info(path: str | Path) -> dict[str, Any]:
    """{'frames', 'fps', 'width', 'height'} of the first video stream, from the header.

    When the container does not store a frame count, packets are counted (demuxing only, no
    decoding), which stays cheap for short clips.
    """
    path = Path(path)
    with _open(path, VideoError) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: the file has no video stream. "
                             "Use the original audiovisual clip, or remove it.")
        stream = container.streams.video[0]
        frames = int(stream.frames or 0)
        if frames == 0:
            try:
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            except av.FFmpegError as exc:
                raise VideoError(f"{path}: the video stream is corrupt ({exc}). "
                                 "Re-download or re-encode the clip, or remove it.") from exc
        rate = stream.average_rate or stream.base_rate or Fraction(0)
        return {"frames": frames, "fps": float(rate), "width": int(stream.codec_context.width),
                "height": int(stream.codec_context.height)}


def parse_crop(crop: str | Sequence[int] | None) -> Crop | None:
    """Normalise a crop given as "x,y,w,h" (the CLI's form) or a 4-sequence; None stays None.

    Raises ValueError naming the value when it is not four integers with positive size.
    """
    if crop is None:
        return None
    parts: Sequence[Any] = crop.replace(" ", "").split(",") if isinstance(crop, str) else crop
    try:
        values = tuple(int(p) for p in parts)
        if any(float(p) != int(p) for p in parts):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"crop {crop!r}: expected four integers x,y,w,h (pixels), e.g. 79,115,96,96") from None
    if len(values) != 4:
        raise ValueError(f"crop {crop!r}: expected four integers x,y,w,h (pixels), e.g. 79,115,96,96")
    x, y, w, h = values
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise ValueError(f"crop {crop!r}: x and y must be >= 0 and w, h > 0")
    return (x, y, w, h)


def check_crop(crop: Crop, width: int, height: int, source: str | Path) -> None:
    """Raise VideoError when `crop` does not lie inside a width x height frame."""
    x, y, w, h = crop
    if x + w > width or y + h > height:
        raise VideoError(f"{source}: crop x={x},y={y},w={w},h={h} lies outside the {width}x{height} "
                         "frame. Choose a crop with x+w <= width and y+h <= height.")


def read_video_frames(path: str | Path, crop: str | Sequence[int] | None = None,
                      gray: bool = True) -> np.ndarray:
    """Decode all frames of the first video stream as uint8.

    Returns [T, H, W] grayscale (lip-reading front ends work on luminance), or [T, H, W, 3] RGB when
    `gray` is False. `crop` = (x, y, w, h) in pixels, or "x,y,w,h", is applied to every frame; it is
    checked against the frame size before decoding so a wrong crop fails at once.
    """
    path = Path(path)
    try:
        box = parse_crop(crop)
    except ValueError as exc:
        raise VideoError(f"{path}: {exc}") from None
    with _open(path, VideoError) as container:
        if not container.streams.video:
            raise VideoError(f"{path}: the file has no video stream. "
                             "Use the original audiovisual clip, or remove it.")
        stream = container.streams.video[0]
        if box is not None:
            check_crop(box, int(stream.codec_context.width), int(stream.codec_context.height), path)
        fmt = "gray" if gray else "rgb24"
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                img = frame.to_ndarray(format=fmt)
                if box is not None:
                    x, y, w, h = box
                    if x + w > img.shape[1] or y + h > img.shape[0]:  # size changed mid-stream
                        check_crop(box, img.shape[1], img.shape[0], path)
                    img = img[y:y + h, x:x + w]
                frames.append(np.ascontiguousarray(img))
        except av.FFmpegError as exc:
            raise VideoError(f"{path}: the video stream is corrupt ({exc}). "
                             "Re-download or re-encode the clip, or remove it.") from exc
    if not frames:
        raise VideoError(f"{path}: the video stream holds no decodable frames. "
                         "Re-download or re-encode the clip, or remove it.")
    return np.stack(frames).astype(np.uint8, copy=False)
