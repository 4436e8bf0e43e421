"""Mouth frames for the visual pretext: what the lips did during a crop of a clip's audio.

The visual objective (encoders/visual.py) generates the mouth frames of a crop from its audio and
a still frame of the speaker, so it needs, for a manifest row and a range of 25 fps frames, the
real frames and that still. `MouthFrameSource` reads both from either kind of audiovisual manifest:

  embedded corpus  (meta kind "embedded", a `mouth_track` column, speakers.csv beside it): frames
                   are rendered from the clip's articulation track (bench.data.corpus.mouth), exactly
                   what `EmbeddedCorpus.frames` gives; the identity frame is the speaker's rest
                   pose (`EmbeddedCorpus.identity_frame`), the still the corpus was drawn from.
  LRW-style video  (a `video_path` column; meta `mouth_crop` = [x, y, w, h]): frames are decoded
                   with PyAV (`bench.data.mouth_shards.decode_mouth_crop`), cropped to the mouth box, taken as
                   luminance and resized to size x size (area averaging when shrinking, bilinear
                   when enlarging; a non-square box is stretched). LRW publishes no speaker
                   identities and no neutral still, so the identity frame is the first frame of the
                   clip's own video, the usual choice in speech-driven animation (Vougioukas et
                   al. take the still from the clip being generated). A manifest with video but no
                   `mouth_crop` uses the whole frame.

Decoded or rendered clips are kept in a small LRU cache (uint8, size x size per frame), so the
crops of a clip seen again soon are not decoded twice. An LRW-style manifest whose clips were
decoded once into mouth shards (`avbench prepare lrw PATH --mouth-shards`, bench.data.mouth_shards)
of the size asked for is read from them instead: memory-mapped views, no mp4 is opened. Shards
made from another manifest or crop are an error, not silently used or ignored.

Alignment (16 kHz audio, 25 fps video): audio sample s lies in video frame s // 640. Crops start on
a frame boundary (the pretext sets crop_align = 640), and an encoder with a 640-sample hop emits
frame k from the crop's samples [640k, 640k + 640), so encoder frame k of a crop starting at sample
`start` is video frame `start // 640 + k`: one to one, never interpolated. How many frames a crop
of n samples has is the encoder's own `output_lengths(n)`: floor(n / 640) for whole 40 ms pieces,
plus, for the 1D ResNet, a last partial piece when it holds at least 612 samples (never more than
ceil(n / 640)); that frame is still video frame start // 640 + k, and frames past the end of the
clip's video are zero padding that the loss masks (`frames` returns how many are real).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from bench.data.manifest import Manifest
from bench.data.mouth_shards import MouthShards, decode_mouth_crop
from bench.errors import ConfigError

SAMPLE_RATE = 16_000
VIDEO_FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS  # 640: one 25 fps video frame of 16 kHz audio
log = logging.getLogger("avbench.mouth_frames")

__all__ = [
    "SAMPLES_PER_FRAME",
    "MouthFrameSource",
    "evenly_spaced_rows",
    "first_video_frames",
    "manifest_has_video",
    "video_frame_of_sample",
]


def video_frame_of_sample(sample: int | torch.Tensor) -> int | torch.Tensor:
    """The 25 fps video frame that 16 kHz audio sample `sample` falls in."""
    if isinstance(sample, torch.Tensor):
        return torch.div(sample, SAMPLES_PER_FRAME, rounding_mode="floor")
    return int(sample) // SAMPLES_PER_FRAME


def first_video_frames(starts: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """The video frame each crop's encoder frame 0 maps to; crops must start on a frame boundary."""
    starts = torch.as_tensor(starts, dtype=torch.long).reshape(-1)
    off = starts % SAMPLES_PER_FRAME
    if bool((off != 0).any()) or bool((starts < 0).any()):
        bad = int(starts[(off != 0) | (starts < 0)][0])
        raise ConfigError(f"a crop starts at sample {bad}, not on a 25 fps video frame boundary (a multiple of "
                          f"{SAMPLES_PER_FRAME} samples at 16 kHz). The visual pretext needs crop_align="
                          f"{SAMPLES_PER_FRAME} so that audio frames map one to one onto video frames.")
    return torch.div(starts, SAMPLES_PER_FRAME, rounding_mode="floor")


def evenly_spaced_rows(manifest: Manifest, split: str, max_clips: int) -> list[int]:
    """Up to `max_clips` row positions (iloc) of `split`, spread evenly over its clip_id order.

    Deterministic (a function of the manifest only), so every snapshot and baseline sees the same
    clips; spreading them rather than taking the first ones covers several speakers and words.
    """
    table = manifest.table
    positions = np.flatnonzero((table["split"] == split).to_numpy())
    if len(positions) == 0 or max_clips <= 0:
        return []
    order = np.argsort(table["clip_id"].to_numpy()[positions], kind="stable")
    positions = positions[order]
    if len(positions) <= max_clips:
        return [int(p) for p in positions]
    picks = np.unique(np.round(np.linspace(0, len(positions) - 1, max_clips)).astype(int))
    return [int(p) for p in positions[picks]]


class MouthFrameSource:
    """Real mouth frames and identity stills of a manifest's clips, as float32 in [0, 1].

    `row` is always a position in `manifest.table` (iloc), as `CropInfo.rows` gives it.
    """

    def __init__(self, manifest: Manifest, size: int = 64, cache_clips: int = 256) -> None:
        if size < 8:
            raise ConfigError(f"mouth frames: size must be at least 8 pixels, got {size}")
        self.manifest = manifest
        self.size = int(size)
        self.cache_clips = max(1, int(cache_clips))
        self._clips: OrderedDict[int, np.ndarray] = OrderedDict()
        self._identities: OrderedDict[object, np.ndarray] = OrderedDict()
        self._mean_frames: dict[tuple[str, int], np.ndarray] = {}
        self._shards = None
        # Clips decoded from mp4 or rendered from a track: stays 0 while mouth shards serve every read.
        self.decoded_clips = 0
        table = manifest.table
        meta = manifest.meta or {}
        self._corpus = None
        if "mouth_track" in table.columns and (meta.get("kind") == "embedded"
                                               or (manifest.root / "speakers.csv").is_file()):
            self.kind = "embedded"
            speakers = manifest.root / "speakers.csv"
            if not speakers.is_file():
                raise ConfigError(f"{manifest.path}: an embedded-corpus manifest, but {speakers} (the speakers' "
                                  "face identities, needed to render mouth frames) is missing. Rebuild the corpus "
                                  "with `avbench corpus build`.")
            import pandas as pd

            from bench.data.corpus.embedded import EmbeddedCorpus

            self._corpus = EmbeddedCorpus(path=manifest.root, manifest=manifest,
                                          speakers=pd.read_csv(speakers, dtype={"speaker": str}))
            self._shards = self._open_shards(manifest)
        elif "video_path" in table.columns:
            self.kind = "video"
            crop = meta.get("mouth_crop")
            self.crop = None if crop is None else tuple(int(v) for v in crop)
            self._shards = self._open_shards(manifest)
        else:
            raise ConfigError(f"{manifest.path}: the visual pretext needs video, and this manifest has none (no "
                              "`video_path` column, and it is not an embedded corpus with `mouth_track`). Pretrain "
                              "it on an audiovisual corpus: LRW (`avbench prepare lrw`) or the embedded corpus "
                              "(`avbench corpus build`); audio-only corpora such as Speech Commands cannot drive it.")

    def _open_shards(self, manifest: Manifest):
        shards = MouthShards.open(manifest)  # raises when they were made from another manifest or crop
        if shards is not None and shards.size != self.size:
            log.warning("%s holds %dpx mouth frames and %dpx are asked for: %s them instead (%s)",
                        shards.folder, shards.size, self.size, "rendering" if self.kind == "embedded" else "decoding",
                        f"delete {shards.folder} to shard {self.size}px" if self.kind == "embedded" else
                        f"rerun `avbench prepare lrw PATH --mouth-shards --shard-size {self.size}` to shard that size")
            return None
        return shards

    def __getstate__(self) -> dict:
        # Sent to loader worker processes: the clip caches (views of memory maps, or rendered
        # frames) would be pickled as copies; each process fills its own.
        state = dict(self.__dict__)
        state["_clips"], state["_identities"] = OrderedDict(), OrderedDict()
        return state

    @property
    def sharded(self) -> bool:
        return self._shards is not None

    def ensure_shards(self, workers: int | None = None, progress: bool = True) -> None:
        """Render an embedded corpus's frames once into mouth shards, unless they are there already.

        Rendering (several ms per clip and core) cannot keep up with a GPU step; reading shards can.
        LRW is not sharded here: decoding 500k mp4s takes hours, so it is a step the user asks for
        (`avbench prepare lrw PATH --mouth-shards`).
        """
        if self.kind != "embedded" or self._shards is not None:
            return
        from bench.data.mouth_shards import write_mouth_shards

        if workers is None and len(self.manifest.table) < 2000:
            workers = 1  # a pool's start-up costs more than rendering a small corpus (~6 ms a clip)
        written = write_mouth_shards(self.manifest, size=self.size, workers=workers, progress=progress)
        log.info("rendered %d clips' mouth frames once into %s (%.1f s)", written.clips, written.folder,
                 written.seconds)
        self._shards = self._open_shards(self.manifest)

    # ------------------------------------------------------------------ whole clips (uint8, cached)

    def _cached(self, cache: OrderedDict, key: object, make) -> np.ndarray:
        hit = cache.get(key)
        if hit is not None:
            cache.move_to_end(key)
            return hit
        value = make()
        cache[key] = value
        while len(cache) > self.cache_clips:
            cache.popitem(last=False)
        return value

    def _cell(self, row: int, column: str) -> str:
        table = self.manifest.table
        if not 0 <= row < len(table):
            raise IndexError(f"{self.manifest.path}: row {row} is outside the manifest (0..{len(table) - 1})")
        value = table[column].iloc[row]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.manifest.path}: clip {table['clip_id'].iloc[row]!r} has no {column}; the "
                              "visual pretext needs the video of every clip it trains on. Remove the clip or "
                              "re-run the preparer.")
        return value

    def clip_frames(self, row: int) -> np.ndarray:
        """All frames of a clip, uint8 [T, size, size] (read-only, shared with the cache)."""
        return self._cached(self._clips, int(row), lambda: self._load_clip(int(row)))

    def _load_clip(self, row: int) -> np.ndarray:
        if self._shards is not None:
            return self._shards.frames(row)  # a read-only view of the memory map: nothing decoded or copied
        self.decoded_clips += 1
        if self.kind == "embedded":
            frames = self._corpus.frames(self.manifest.table["clip_id"].iloc[row], size=self.size)
        else:
            frames = decode_mouth_crop(self.manifest.resolve(self._cell(row, "video_path")), self.crop, self.size)
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        frames.setflags(write=False)
        return frames

    def num_frames(self, row: int) -> int:
        return int(self.clip_frames(row).shape[0])

    # ------------------------------------------------------------------ the public reads (float32)

    def frames(self, row: int, first_frame: int, n_frames: int) -> tuple[np.ndarray, int]:
        """Frames first_frame .. first_frame + n_frames - 1 of a clip, float32 [n, size, size] in [0, 1].

        Frames past the end of the clip's video are zeros; the second value counts the real ones.
        """
        if first_frame < 0 or n_frames < 0:
            raise ValueError(f"frames(): first_frame and n_frames must be >= 0, got {first_frame}, {n_frames}")
        clip = self.clip_frames(row)
        real = clip[first_frame:first_frame + n_frames]
        out = np.zeros((n_frames, self.size, self.size), dtype=np.float32)
        out[:len(real)] = real.astype(np.float32) / 255.0
        return out, len(real)

    def _identity_uint8(self, row: int) -> np.ndarray:
        if self.kind == "embedded":
            speaker = str(self.manifest.table["speaker"].iloc[int(row)])
            if speaker not in self._identities:  # one small still per speaker: kept, never evicted
                self._identities[speaker] = self._corpus.identity_frame(speaker, size=self.size)
            return self._identities[speaker]
        return self.clip_frames(row)[0]  # no neutral still exists for LRW: the clip's own first frame

    def identity(self, row: int) -> np.ndarray:
        """The still frame the generator starts from, float32 [size, size] in [0, 1]."""
        return self._identity_uint8(row).astype(np.float32) / 255.0

    def batch(self, rows: Sequence[int], first_frames: Sequence[int] | torch.Tensor,
              n_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Real frames [B, n, size, size], their real counts [B] and identity stills [B, size, size]."""
        first_frames = [int(f) for f in torch.as_tensor(first_frames).reshape(-1).tolist()]
        if len(first_frames) != len(rows):
            raise ValueError(f"batch(): {len(rows)} rows but {len(first_frames)} first frames")
        if self._shards is not None:
            return self._batch_of_uint8(rows, first_frames, n_frames)
        frames, counts, stills = [], [], []
        for row, first in zip(rows, first_frames):
            f, n = self.frames(int(row), first, n_frames)
            frames.append(f)
            counts.append(n)
            stills.append(self.identity(int(row)))
        return (torch.from_numpy(np.stack(frames)) if frames else torch.zeros(0, n_frames, self.size, self.size),
                torch.tensor(counts, dtype=torch.long),
                torch.from_numpy(np.stack(stills)) if stills else torch.zeros(0, self.size, self.size))

    def _batch_of_uint8(self, rows: Sequence[int], first_frames: list[int],
                        n_frames: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """batch() for frames read from shards: gathered as uint8 and converted to float once, the same
        values as frames()/identity() give; per-clip float arrays would cost more than the read itself."""
        if n_frames < 0 or any(f < 0 for f in first_frames):
            raise ValueError(f"batch(): first frames and n_frames must be >= 0, got {first_frames}, {n_frames}")
        frames = np.zeros((len(rows), n_frames, self.size, self.size), dtype=np.uint8)
        stills = np.empty((len(rows), self.size, self.size), dtype=np.uint8)
        counts = []
        for i, (row, first) in enumerate(zip(rows, first_frames)):
            clip = self.clip_frames(int(row))
            real = clip[first:first + n_frames]
            frames[i, :len(real)] = real
            stills[i] = clip[0] if self.kind == "video" else self._identity_uint8(int(row))
            counts.append(len(real))
        return (torch.from_numpy(frames).to(torch.float32).div_(255.0), torch.tensor(counts, dtype=torch.long),
                torch.from_numpy(stills).to(torch.float32).div_(255.0))

    def mean_frame(self, split: str = "train", max_clips: int = 64) -> np.ndarray:
        """The mean over all frames of up to `max_clips` clips of `split` (evenly spaced, deterministic).

        The "predict the average mouth" baseline of the generation metrics. Falls back to the whole
        manifest when the split is empty.
        """
        key = (split, int(max_clips))
        if key not in self._mean_frames:
            rows = evenly_spaced_rows(self.manifest, split, max_clips)
            if not rows:
                every = np.arange(len(self.manifest.table))
                rows = [int(r) for r in every[np.round(np.linspace(0, len(every) - 1,
                                                                   min(max_clips, len(every)))).astype(int)]]
            total = np.zeros((self.size, self.size), dtype=np.float64)
            count = 0
            for row in rows:
                clip = self.clip_frames(row)
                total += clip.astype(np.float64).sum(axis=0)
                count += clip.shape[0]
            self._mean_frames[key] = (total / max(count, 1) / 255.0).astype(np.float32)
        return self._mean_frames[key]

    def describe(self) -> dict:
        """What the frames are, for the pretext's config()."""
        d = {"kind": self.kind, "size": self.size, "fps": VIDEO_FPS, "samples_per_frame": SAMPLES_PER_FRAME}
        if self.kind == "video":
            d["mouth_crop"] = list(self.crop) if self.crop else None
            d["source"] = f"mouth shards ({self._shards.folder})" if self._shards is not None else "mp4 (decoded)"
            d["identity"] = "first frame of the clip"
        else:
            d["identity"] = "speaker rest frame"
            d["source"] = (f"mouth shards ({self._shards.folder})" if self._shards is not None
                           else "rendered from the mouth track")
        return d


def manifest_has_video(manifest: Manifest) -> bool:
    """Whether `MouthFrameSource(manifest)` would find frames (without raising)."""
    cols = manifest.table.columns
    return "video_path" in cols or ("mouth_track" in cols and (manifest.root / "speakers.csv").is_file())

