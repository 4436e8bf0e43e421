"""Mouth frames decoded (LRW) or rendered (the embedded corpus) once into memory-mapped uint8
shards, with the clips' audio alongside.

Decoding, cropping and resizing an mp4 costs tens of milliseconds per clip and core, and rendering
an embedded clip's frames several, far slower than a GPU step consumes clips
(benchmarks/mouth_frames_benchmark.py). `write_mouth_shards` therefore decodes every clip of a
video manifest once with `decode_mouth_crop`, the function `MouthFrameSource` decodes mp4s with,
or renders every clip of an embedded corpus once with `EmbeddedCorpus.frames`, the function it
renders with (so the bytes are the same either way), into raw files beside the manifest::

    <manifest folder>/mouth-shards/
        index.json           format, size, frames per clip, mouth_crop, manifest_id, and per clip
                             (columns, not one object per clip: LRW has 500k clips) clip_id,
                             shard, position, n_frames, n_samples
        frames-00000.u8      uint8  [clips in shard, frames_per_clip, size, size], zero padded
        audio-00000.i16      int16  [clips in shard, max_samples of the shard], zero padded: the
                             16 kHz samples of the clip's manifest wav, bit for bit

`MouthShards.open(manifest)` maps them read-only; `frames(row)` is a view, never a copy. The
manifest itself is untouched (the shards are a derived cache, so its manifest_id is the same with
or without them); the index records the manifest_id and crop it was made from, and a mismatch is
an error rather than a silent read of another corpus's frames.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from bench.data.manifest import Manifest, read_manifest
from bench.errors import ConfigError
from bench.files import atomic_write_bytes

SHARD_FOLDER = "mouth-shards"
INDEX_NAME = "index.json"
FORMAT_VERSION = 1
LRW_FRAMES = 29
# 8192 clips of 29 64x64 frames is ~1 GB a shard: LRW's ~500k clips make ~60 shards, so the two
# memory maps per shard stay far below the usual limit of 1024 open files (each map holds one).
DEFAULT_CLIPS_PER_SHARD = 8192

__all__ = ["SHARD_FOLDER", "MouthShards", "WrittenShards", "decode_mouth_crop", "write_mouth_shards"]


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, H, W] -> uint8 [T, size, size]: area averaging to shrink, bilinear to enlarge."""
    if frames.shape[1:] == (size, size):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float32).unsqueeze(1)
    shrink = frames.shape[1] >= size and frames.shape[2] >= size
    if shrink:
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="area")
    else:
        y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return y.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def decode_mouth_crop(path: str | Path, crop: Sequence[int] | None, size: int) -> np.ndarray:
    """An mp4's mouth frames, uint8 [T, size, size]: cropped to `crop` (x, y, w, h; None = whole
    frame), luminance, resized with `_resize`. MouthFrameSource and the shard writer both use it."""
    from bench.data import video  # looked up at call time, so a test can replace read_video_frames

    return _resize(video.read_video_frames(path, crop=crop, gray=True), size)


def _rerun_hint(manifest: Manifest) -> str:
    if _is_embedded(manifest):
        return (f"Delete {manifest.root / SHARD_FOLDER}: the visual pretext renders the frames again and writes "
                "new shards on its next start.")
    return (f"Rerun `avbench prepare lrw PATH --mouth-shards` (with the options that wrote {manifest.path}) to "
            f"rewrite them, or delete {manifest.root / SHARD_FOLDER} to decode the mp4s instead.")


def _is_embedded(manifest: Manifest) -> bool:
    """An embedded-corpus manifest: frames are rendered from articulation tracks (as MouthFrameSource tells)."""
    return "mouth_track" in manifest.table.columns and ((manifest.meta or {}).get("kind") == "embedded"
                                                        or (manifest.root / "speakers.csv").is_file())


class _ClipJob(NamedTuple):
    video: str                    # the mp4 to decode, or the embedded corpus folder to render from
    wav: str
    n_samples: int
    crop: tuple[int, int, int, int] | None
    size: int
    clip_id: str = ""
    render: bool = False          # an embedded clip: render its frames instead of decoding an mp4


_CORPORA: dict[str, object] = {}  # per worker process: the embedded corpus it renders from, opened once


def _render_clip(job: _ClipJob) -> np.ndarray:
    from bench.data.corpus.embedded import EmbeddedCorpus

    if job.video not in _CORPORA:
        _CORPORA[job.video] = EmbeddedCorpus.open(Path(job.video))
    return np.ascontiguousarray(_CORPORA[job.video].frames(job.clip_id, size=job.size), dtype=np.uint8)


class WrittenShards(NamedTuple):
    folder: Path
    clips: int
    bytes: int
    seconds: float


def _decode_clip(job: _ClipJob) -> tuple[np.ndarray, np.ndarray]:
    """One clip's mouth frames uint8 [T, size, size] (as MouthFrameSource decodes them) and int16 audio."""
    if job.render:  # an embedded clip: rendered, no video involved (nor PyAV imported)
        frames = _render_clip(job)
    else:
        from bench.data.video import VideoError

        try:
            frames = decode_mouth_crop(job.video, job.crop, job.size)
        except VideoError as exc:
            raise VideoError(f"{exc} No mouth shards were written; once the clip is fixed or removed, rerun "
                             "`avbench prepare lrw PATH --mouth-shards`.") from None
    try:
        audio, _ = sf.read(job.wav, dtype="int16", always_2d=False)
    except (RuntimeError, OSError) as exc:  # soundfile's LibsndfileError is a RuntimeError
        raise ConfigError(f"{job.wav}: cannot be read ({exc}). Rerun `avbench prepare lrw PATH --mouth-shards`.") from None
    if audio.ndim != 1 or len(audio) != job.n_samples:
        raise ConfigError(f"{job.wav}: {audio.shape} samples, the manifest says {job.n_samples} (mono): the wav changed "
                          "after the manifest was written. Rerun `avbench prepare lrw PATH --mouth-shards`.")
    return frames, audio


def _init_worker() -> None:
    torch.set_num_threads(1)  # the pool is the parallelism; threads would only fight over the cores


def _decoded(jobs: Sequence[_ClipJob], workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every job's decode, in order: in this process for one worker, else in a process pool."""
    if workers <= 1:
        yield from map(_decode_clip, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: workers do not inherit the parent's torch thread pool, which fork would leave broken.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        try:
            yield from pool.map(_decode_clip, jobs, chunksize=8)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _jobs(manifest: Manifest, size: int) -> tuple[list[_ClipJob], list | None]:
    table = manifest.table
    if _is_embedded(manifest):
        return [_ClipJob(str(manifest.root), str(manifest.resolve(wav)), int(n), None, int(size), str(clip_id), True)
                for clip_id, wav, n in zip(table["clip_id"], table["audio_path"], table["num_samples"])], None
    if "video_path" not in table.columns:
        raise ConfigError(f"{manifest.path}: no `video_path` column, so there are no mouth crops to shard. Mouth "
                          "shards are for LRW-style manifests (`avbench prepare lrw PATH --mouth-shards`).")
    crop = manifest.meta.get("mouth_crop")
    box = None if crop is None else tuple(int(v) for v in crop)
    jobs = []
    for clip_id, video, wav, n in zip(table["clip_id"], table["video_path"], table["audio_path"],
                                      table["num_samples"]):
        if not isinstance(video, str) or not video:
            raise ConfigError(f"{manifest.path}: clip {clip_id!r} has no video_path; every clip needs its mp4 to be "
                              "sharded. Remove the clip or rerun `avbench prepare lrw PATH`.")
        jobs.append(_ClipJob(str(manifest.resolve(video)), str(manifest.resolve(wav)), int(n), box, int(size)))
    return jobs, (None if box is None else list(box))


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fill_shards(folder: Path, jobs: Sequence[_ClipJob], decoded: Iterator[tuple[np.ndarray, np.ndarray]],
                 frames_per_clip: int, clips_per_shard: int, progress: bool) -> tuple[list[dict], list[int]]:
    """Write the decoded clips into the shard files in `folder`; return the shard list and frames per clip."""
    from tqdm import tqdm

    size = jobs[0].size
    shards: list[dict] = []
    n_frames: list[int] = []
    with tqdm(total=len(jobs), desc="mouth shards", unit="clip", disable=not progress) as bar:
        for first in range(0, len(jobs), clips_per_shard):
            part = jobs[first:first + clips_per_shard]
            name = f"{len(shards):05d}"
            max_samples = max(job.n_samples for job in part)
            frames_file, audio_file = folder / f"frames-{name}.u8", folder / f"audio-{name}.i16"
            frames = np.memmap(frames_file, np.uint8, "w+", shape=(len(part), frames_per_clip, size, size))
            audio = np.memmap(audio_file, np.int16, "w+", shape=(len(part), max_samples))
            for position, job in enumerate(part):
                clip, pcm = next(decoded)
                if len(clip) > frames_per_clip:
                    raise ConfigError(f"{job.video}: {len(clip)} frames, more than the {frames_per_clip} a shard "
                                      "holds per clip (LRW clips have 29). Remove the clip, or train without "
                                      "--mouth-shards.")
                frames[position, :len(clip)] = clip
                audio[position, :len(pcm)] = pcm
                n_frames.append(len(clip))
                bar.update(1)
            frames.flush()
            audio.flush()
            del frames, audio
            _fsync(frames_file)
            _fsync(audio_file)
            shards.append({"frames": frames_file.name, "audio": audio_file.name, "clips": len(part),
                           "max_samples": max_samples})
    return shards, n_frames


def _remove_abandoned(root: Path) -> None:
    """Delete temp folders of writers that died (killed mid-write): they are never read, only take space."""
    for entry in root.glob(f".{SHARD_FOLDER}.*"):
        try:
            pid = int(entry.name.split(".")[2])
            os.kill(pid, 0)
        except ProcessLookupError:  # its writer is gone
            shutil.rmtree(entry, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):  # not ours, or a live process of another user
            continue


def _publish(tmp: Path, final: Path) -> None:
    """Move the complete folder into place. A rename is atomic, so readers see the old shards, none
    (for a moment, and then they decode mp4s), or the new ones: never a half-written set."""
    old = None
    if final.exists():
        old = final.with_name(f".{SHARD_FOLDER}.{os.getpid()}.replaced")
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_mouth_shards(manifest: Manifest | str | Path, size: int = 64, workers: int | None = None,
                       progress: bool = True, clips_per_shard: int = DEFAULT_CLIPS_PER_SHARD) -> WrittenShards:
    """Decode every clip's mouth crop once into `<manifest folder>/mouth-shards/` (see the module doc).

    `workers` processes decode (default: every core). The shards are written into a temp folder
    beside it and renamed into place only when complete, so an error or a kill leaves no
    `mouth-shards` folder that looks valid (and a previous one stays as it was).
    """
    started = time.perf_counter()
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    if size < 8 or clips_per_shard < 1:
        raise ConfigError(f"mouth shards: size must be >= 8 and clips_per_shard >= 1, got {size}, {clips_per_shard}")
    jobs, crop = _jobs(manifest, size)
    if _is_embedded(manifest):  # one frame per 640 samples (bench.data.corpus.mouth renders at 25 fps)
        frames_per_clip = int(-(-int(manifest.table["num_samples"].max()) // 640))
    else:
        frames_per_clip = int((manifest.meta.get("video") or {}).get("frames") or LRW_FRAMES)
    workers = max(1, min(int(workers or os.cpu_count() or 1), len(jobs)))
    _remove_abandoned(manifest.root)
    tmp = Path(tempfile.mkdtemp(dir=manifest.root, prefix=f".{SHARD_FOLDER}.{os.getpid()}."))
    decoded = _decoded(jobs, workers)
    try:
        shards, n_frames = _fill_shards(tmp, jobs, decoded, frames_per_clip, clips_per_shard, progress)
        positions = np.arange(len(jobs))
        index = {"format": FORMAT_VERSION, "size": int(size), "frames_per_clip": frames_per_clip,
                 "sample_rate": 16_000, "mouth_crop": crop, "manifest_id": manifest.manifest_id,
                 "manifest": str(manifest.path), "shards": shards,
                 "clips": {"clip_id": manifest.table["clip_id"].astype(str).tolist(),
                           "shard": (positions // clips_per_shard).tolist(),
                           "position": (positions % clips_per_shard).tolist(), "n_frames": n_frames,
                           "n_samples": [job.n_samples for job in jobs]}}
        # The index goes last: a folder with index.json is complete even before the rename.
        atomic_write_bytes(tmp / INDEX_NAME, json.dumps(index).encode())
        _publish(tmp, manifest.root / SHARD_FOLDER)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        decoded.close()  # stops the pool (cancelling what is left to decode, after an error)
    final = manifest.root / SHARD_FOLDER
    total = sum(p.stat().st_size for p in final.iterdir())
    return WrittenShards(final, len(jobs), total, time.perf_counter() - started)


class MouthShards:
    """The shards of a manifest, mapped read-only. `row` is a position in `manifest.table` (iloc)."""

    def __init__(self, manifest: Manifest, folder: Path, index: dict, entry_of_row: np.ndarray) -> None:
        self.manifest, self.folder, self.index = manifest, folder, index
        self.size = int(index["size"])
        self.frames_per_clip = int(index["frames_per_clip"])
        clips = index["clips"]
        # Per manifest row: which shard, where in it, and how much of it is real.
        self._shard = np.asarray(clips["shard"], dtype=np.int64)[entry_of_row]
        self._position = np.asarray(clips["position"], dtype=np.int64)[entry_of_row]
        self._n_frames = np.asarray(clips["n_frames"], dtype=np.int64)[entry_of_row]
        self._n_samples = np.asarray(clips["n_samples"], dtype=np.int64)[entry_of_row]
        self._maps: dict[tuple[int, str], np.memmap] = {}

    @classmethod
    def open(cls, manifest: Manifest) -> MouthShards | None:
        """The manifest's shards; None when it has none; ConfigError when they were made from something else."""
        folder = manifest.root / SHARD_FOLDER
        if not folder.is_dir():
            return None
        try:
            index = json.loads((folder / INDEX_NAME).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{folder / INDEX_NAME}: unreadable ({exc}). {_rerun_hint(manifest)}") from None
        if index.get("format") != FORMAT_VERSION:
            raise ConfigError(f"{folder}: mouth shards of format {index.get('format')!r}, this avbench reads "
                              f"{FORMAT_VERSION}. {_rerun_hint(manifest)}")
        crop = manifest.meta.get("mouth_crop")
        crop = None if crop is None else [int(v) for v in crop]
        if index.get("mouth_crop") != crop:
            raise ConfigError(f"{folder}: the shards hold mouth crop {index.get('mouth_crop')}, but "
                              f"{manifest.path.parent / 'manifest.json'} says {crop}. {_rerun_hint(manifest)}")
        entry_of_row = pd.Index(index["clips"]["clip_id"]).get_indexer(manifest.table["clip_id"].astype(str))
        missing = manifest.table["clip_id"].to_numpy()[entry_of_row < 0]
        if len(missing):
            raise ConfigError(f"{folder}: {len(missing)} clip(s) of {manifest.path} are not in the shards, first "
                              f"{missing[0]!r}. {_rerun_hint(manifest)}")
        if index.get("manifest_id") != manifest.manifest_id:
            raise ConfigError(f"{folder}: the shards were made from manifest {index.get('manifest_id')}, but "
                              f"{manifest.path} is now {manifest.manifest_id}. {_rerun_hint(manifest)}")
        shards = cls(manifest, folder, index, entry_of_row)
        shards._check_file_sizes()
        return shards

    def _check_file_sizes(self) -> None:
        """A truncated or swapped shard file would give garbage frames; its size says so at once."""
        per_frame_clip = self.frames_per_clip * self.size * self.size
        for shard in self.index["shards"]:
            for name, want in ((shard["frames"], shard["clips"] * per_frame_clip),
                               (shard["audio"], shard["clips"] * shard["max_samples"] * 2)):
                path = self.folder / name
                have = path.stat().st_size if path.is_file() else None
                if have != want:
                    raise ConfigError(f"{path}: {have if have is not None else 'missing'} bytes, the index says "
                                      f"{want}. {_rerun_hint(self.manifest)}")

    def _map(self, shard: int, kind: str) -> np.memmap:
        if (shard, kind) not in self._maps:
            info = self.index["shards"][shard]
            dtype, shape = ((np.uint8, (info["clips"], self.frames_per_clip, self.size, self.size)) if kind == "frames"
                            else (np.int16, (info["clips"], info["max_samples"])))
            self._maps[shard, kind] = np.memmap(self.folder / info[kind], dtype, "r", shape=shape)
        return self._maps[shard, kind]

    def _checked(self, row: int) -> int:
        row = int(row)
        if not 0 <= row < len(self._shard):  # a negative row would silently wrap to another clip
            raise IndexError(f"{self.manifest.path}: row {row} is outside the manifest (0..{len(self._shard) - 1})")
        return row

    def frames(self, row: int) -> np.ndarray:
        """The clip's real frames, uint8 [n_frames, size, size]: a read-only view of the shard."""
        row = self._checked(row)
        return self._map(int(self._shard[row]), "frames")[self._position[row], :self._n_frames[row]]

    def audio(self, row: int) -> np.ndarray:
        """The clip's 16 kHz samples, int16 [n_samples] (its manifest wav's): a read-only view."""
        row = self._checked(row)
        return self._map(int(self._shard[row]), "audio")[self._position[row], :self._n_samples[row]]

    def __getstate__(self) -> dict:
        # Pickling a memory map would copy the whole shard; another process maps the files anew.
        return {**self.__dict__, "_maps": {}}
