"""The embedded corpus as a thing on disk: its config (sizes, validation, the content id that
names its folder), and a built corpus opened from that folder (manifest, speakers, mouth tracks
and frames rendered on demand). Building it is bench.data.corpus.build's job.

Layout of a built corpus (`$AVBENCH_DATA/corpora/embedded-<id>/`):
  manifest.csv, manifest.json   the manifest (bench.data.manifest), one row per clip
  speakers.csv                  one row per synthetic speaker: voice, prosody, face identity,
                                articulation style (version 4 on)
  audio/WORD/SPK_nohash_R.wav   16 kHz mono PCM16
  tracks/WORD/SPK_nohash_R.npy  float32 [25, 3] articulation track
  noise/*.wav                   background-noise set kept aside (not mixed into any clip)
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.corpus import acoustics
from bench.data.corpus.channels import CHANNEL_MIXES, CODECS
from bench.data.corpus.engines import check_engine, engine_digest
from bench.data.manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest, summarize
from bench.data.prepare.spc import V001_WORDS
from bench.errors import ConfigError
from bench.paths import corpora_dir

# Bump when bench.data.corpus.build's output changes for the same config: old corpora get new ids.
# 2: rand() seeded per utterance; non-reproducible variants dropped.
# 3: recording channels on by default (the "default" mix); a voice engine per corpus (espeak, flite).
# 4: per-speaker articulation (bench.data.corpus.articulation) and camera-like frames
#    (bench.data.corpus.camera); the audio is version 3's.
GENERATOR_VERSION = 4
# Corpora built before version 4 keep the frames they were trained on: flat cartoon lips.
CAMERA_FRAMES_SINCE = 4

# The vocabulary is Speech Commands v0.01's, so the embedded corpus and SPC share a label space.
SPEECH_COMMANDS_WORDS = V001_WORDS

SIZES: dict[str, dict] = {
    "small": {"speakers": 20, "renditions": 1},
    "default": {},
    "large": {"speakers": 240, "renditions": 4},
}

# Corpora that are different datasets, not sizes of one: each preset sets what differs from the
# default (espeak) corpus. The flite corpus has the same 30 words, sizes and splits, but another
# voice engine (so other speakers), another recording-channel mix and another seed: train on one,
# test on the other for cross-dataset generalisation (configs/cross-corpus.yaml).
PRESETS: dict[str, dict] = {
    "espeak": {},
    "flite": {"engine": "flite", "seed": 1, "channels": "mobile"},
}


@dataclass(frozen=True)
class CorpusConfig:
    speakers: int = 120
    words: int = 30
    renditions: int = 3
    seed: int = 0
    clip_seconds: float = 1.0
    snr_db: tuple[float, float] = (5.0, 30.0)
    noise_types: tuple[str, ...] = ("white", "pink", "brown", "babble")
    reverb_prob: float = 0.2
    rt60_s: tuple[float, float] = (0.15, 0.6)
    level_dbfs: tuple[float, float] = (-14.0, -4.0)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    noise_bank_seconds: float = 10.0
    # The recording channel mix (bench.data.corpus.channels.CHANNEL_MIXES); "none" is a perfect
    # 16 kHz channel, what every corpus of generator version 2 and before had.
    channels: str = "default"
    engine: str = "espeak"  # the voice engine, bench.data.corpus.engines.ENGINES
    size: str = field(default="custom", compare=False)

    @classmethod
    def from_size(cls, size: str = "default", preset: str = "espeak", **overrides) -> "CorpusConfig":
        if size not in SIZES:
            raise ConfigError(f"unknown corpus size {size!r}; choose one of {', '.join(SIZES)}")
        if preset not in PRESETS:
            raise ConfigError(f"unknown corpus preset {preset!r}; choose one of {', '.join(PRESETS)}")
        params = {**SIZES[size], **PRESETS[preset], **overrides}
        return cls(size=size if not overrides else "custom", **params).validated()

    @classmethod
    def from_spec(cls, spec: str) -> "CorpusConfig":
        """`embedded[:SIZE]` (the espeak corpus) or `embedded-PRESET[:SIZE]`, e.g. embedded-flite:small;
        a bare size name is the espeak corpus of that size."""
        if spec in SIZES:
            return cls.from_size(spec)
        name, _, size = spec.partition(":")
        preset = name.removeprefix("embedded").removeprefix("-") or "espeak"
        if not name.startswith("embedded") or preset not in PRESETS:
            raise ConfigError(f"{spec!r} names no embedded corpus; write embedded[:SIZE] or embedded-PRESET[:SIZE] "
                              f"with PRESET one of {', '.join(PRESETS)} and SIZE one of {', '.join(SIZES)}")
        return cls.from_size(size or "default", preset=preset)

    def validated(self) -> "CorpusConfig":
        if not 1 <= self.words <= len(SPEECH_COMMANDS_WORDS):
            raise ConfigError(f"words must be in 1..{len(SPEECH_COMMANDS_WORDS)}, got {self.words}")
        if self.speakers < 3:
            raise ConfigError(f"speakers must be at least 3 (one per split), got {self.speakers}")
        if self.renditions < 1:
            raise ConfigError(f"renditions must be at least 1, got {self.renditions}")
        if not 0.0 <= self.reverb_prob <= 1.0:
            raise ConfigError(f"reverb_prob must be in [0, 1], got {self.reverb_prob}")
        check_engine(self.engine)
        if self.channels not in CHANNEL_MIXES:
            raise ConfigError(f"unknown channel mix {self.channels!r}; choose one of {', '.join(CHANNEL_MIXES)}")
        unknown = set(self.noise_types) - set(acoustics.COLOURED_NOISE_BETA) - {"babble"}
        if unknown:
            raise ConfigError(f"unknown noise type(s) {sorted(unknown)}; use white, pink, brown, babble")
        return self

    def identity(self) -> dict:
        d = asdict(self)
        d.pop("size")
        return d

    @property
    def corpus_id(self) -> str:
        # The engine's voice data (espeak-ng's wheel, Flite's libraries) is part of what makes the audio.
        key = json.dumps({"config": self.identity(), "generator": GENERATOR_VERSION,
                          "voices": engine_digest(self.engine)}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @property
    def word_list(self) -> tuple[str, ...]:
        return SPEECH_COMMANDS_WORDS[: self.words]


@dataclass
class EmbeddedCorpus:
    """A built corpus: its folder, manifest and speaker table."""

    path: Path
    manifest: Manifest
    speakers: pd.DataFrame

    @classmethod
    def open(cls, path: Path) -> "EmbeddedCorpus":
        manifest = read_manifest(path / MANIFEST_NAME)
        speakers = pd.read_csv(path / "speakers.csv", dtype={"speaker": str})
        return cls(path=path, manifest=manifest, speakers=speakers)

    @cached_property
    def config(self) -> CorpusConfig:
        """The config the corpus was built from (manifest.json), lists turned back into tuples."""
        meta = self.manifest.meta.get("config")
        if not isinstance(meta, dict):
            raise ConfigError(f"{self.path / 'manifest.json'} has no 'config': rebuild the corpus with "
                              "`avbench corpus build`")
        return CorpusConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()})

    def face(self, speaker: str):
        from bench.data.corpus.mouth import FaceIdentity

        return FaceIdentity.from_dict(self._speaker_row(speaker))

    @cached_property
    def _by_clip(self) -> pd.DataFrame:
        return self.manifest.table.set_index("clip_id")

    def track(self, clip_id: str) -> np.ndarray:
        return np.load(self.manifest.resolve(self._by_clip.loc[clip_id, "mouth_track"]))

    @cached_property
    def camera_frames(self) -> bool:
        """Whether the frames are filmed (version 4 on) or the flat cartoon of version 3 and before."""
        return int(self.manifest.meta.get("generator_version", 0)) >= CAMERA_FRAMES_SINCE

    def articulation(self, speaker: str):
        from bench.data.corpus.articulation import ArticulationStyle

        return ArticulationStyle.from_dict(self._speaker_row(speaker))

    def _speaker_row(self, speaker: str) -> dict:
        row = self.speakers[self.speakers["speaker"] == speaker]
        if row.empty:
            raise KeyError(f"speaker {speaker!r} is not in {self.path / 'speakers.csv'}")
        return row.iloc[0].to_dict()

    def texture_seed(self, speaker: str) -> int:
        """The seed of the speaker's skin texture map (camera.py): fixed per corpus and speaker."""
        return zlib.crc32(f"{self.manifest.meta.get('corpus_id')}:{speaker}".encode())

    def frames(self, clip_id: str, size: int = 64) -> np.ndarray:
        """Render the clip's mouth frames [25, size, size] uint8 on demand."""
        from bench.data.corpus.camera import render_camera_frames
        from bench.data.corpus.mouth import render_frames

        speaker = self._by_clip.loc[clip_id, "speaker"]
        seed = int(hashlib.sha256(clip_id.encode()).hexdigest()[:8], 16)
        if not self.camera_frames:
            return render_frames(self.track(clip_id), self.face(speaker), size=size, jitter_seed=seed)
        return render_camera_frames(self.track(clip_id), self.face(speaker),
                                    jaw_share=self.articulation(speaker).jaw_share,
                                    texture_seed=self.texture_seed(speaker), clip_seed=seed, size=size)

    def identity_frame(self, speaker: str, size: int = 64) -> np.ndarray:
        from bench.data.corpus.camera import camera_identity_frame
        from bench.data.corpus.mouth import identity_frame
        from bench.data.corpus.visemes import REST

        if not self.camera_frames:
            return identity_frame(self.face(speaker), size=size)
        return camera_identity_frame(self.face(speaker), REST, jaw_share=self.articulation(speaker).jaw_share,
                                     texture_seed=self.texture_seed(speaker), size=size)


def corpus_path(config: CorpusConfig, out_root: Path | None = None) -> Path:
    return Path(out_root or corpora_dir()) / f"embedded-{config.corpus_id}"


def is_corpus_spec(spec: str) -> bool:
    """`embedded`, `embedded:SIZE` or `embedded-PRESET[:SIZE]`, unless a file or folder of that name
    exists (a built corpus's folder is itself called embedded-<id>)."""
    return (spec == "embedded" or spec.startswith(("embedded:", "embedded-"))) and not Path(spec).exists()


def find_corpus(path_or_size: str | Path = "default") -> EmbeddedCorpus:
    """A built corpus by folder, manifest path, size name (small/default/large) or corpus spec
    (embedded-flite:small)."""
    spec = str(path_or_size)
    if spec in SIZES or is_corpus_spec(spec):
        config = CorpusConfig.from_spec(spec)
        path = corpus_path(config)
        if not (path / MANIFEST_NAME).is_file():
            engine = f" --engine {config.engine}" if config.engine != "espeak" else ""
            raise ManifestError(f"{path}: the {spec!r} embedded corpus is not built yet. "
                                f"Run `avbench corpus build --size {config.size}{engine}`.")
        return EmbeddedCorpus.open(path)
    path = Path(path_or_size)
    if path.name == MANIFEST_NAME:
        path = path.parent
    if not (path / MANIFEST_NAME).is_file():
        raise ManifestError(f"{path}: no embedded corpus here (no {MANIFEST_NAME}). "
                            "Give a corpus folder, or a size name: small, default, large.")
    return EmbeddedCorpus.open(path)


def summary_text(corpus: EmbeddedCorpus) -> str:
    meta = corpus.manifest.meta
    table = corpus.manifest.table
    engine = meta["config"].get("engine", "espeak")
    lines = [f"embedded corpus {meta.get('corpus_id')} (size: {meta.get('size')}, voices: {engine})",
             summarize(corpus.manifest)]
    lines.append(f"words:    {table['label'].nunique()}, speakers: {table['speaker'].nunique()}, "
                 f"renditions: {meta['config']['renditions']}, styles: {', '.join(sorted(table['emotion'].unique()))}")
    lines.append(f"noise:    SNR {meta['config']['snr_db'][0]:g}-{meta['config']['snr_db'][1]:g} dB "
                 f"({', '.join(meta['config']['noise_types'])}); reverb on "
                 f"{int((table['reverb_rt60'] > 0).sum())} clips; {meta.get('trimmed_clips', 0)} clips trimmed to 1 s")
    if "channel" in table:
        channel = table["channel"].astype(str)
        families = {"clean": channel == "clean", "telephone": channel.str.contains("telephone"),
                    "coded": channel.str.contains("|".join(map(re.escape, CODECS))), "agc": channel.str.contains("agc")}
        lines.append(f"channel:  mix {meta['config'].get('channels')}: " + ", ".join(
            f"{name} {int(mask.sum())}" for name, mask in families.items()) + f" of {len(table)} clips")
    lines.append("video:    25 fps mouth tracks, frames rendered on demand (64x64, "
                 + ("filmed: lighting, head motion, blur, H.264)" if corpus.camera_frames else "flat cartoon lips)"))
    lines.append(f"built in {meta.get('build_seconds')} s with {meta.get('workers')} worker(s)")
    lines.append(f"path:     {corpus.path}")
    return "\n".join(lines)
