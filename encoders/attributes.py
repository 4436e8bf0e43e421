"""The audio-only pretext of the proposed encoder (`av-audio`): regress waveform attributes per frame.

PROTOCOL.md, "Audio-only pretext": the encoder predicts informative attributes of the waveform,
in the spirit of PASE's workers. For every 40 ms output frame of the 1D ResNet18 (512-d at 25 Hz)
one small head per attribute regresses that frame's value of:

  mfcc     13  librosa MFCCs (40 slaney mel bands, orthonormal DCT-II), no top_db clipping
  logmel   80  librosa log-mel power in dB (10 log10, amin 1e-10, no top_db)
  prosody   4  [log F0 (natural log of Hz), voicing (fraction of voiced 10 ms frames, 0..1),
                log energy (dB re full scale), zero-crossing rate (crossings per sample)]

Targets are computed from the clean waveform at 100 Hz with the existing code (the MFCC39 and
LogMel encoders of `baselines.spectral`, the batched autocorrelation tracker `pitch` of
`baselines.pase_workers`) and averaged over groups of 4 to 25 Hz.

Grid. Output frame k of the encoder covers samples [640k, 640(k+1)). The 100 Hz frames are
computed on the waveform delayed by 80 samples (80 zeros in front, the same zeros a clip is
centre-padded with anyway), so 100 Hz frame j is centred on sample 160 j - 80, and frame k of the
25 Hz grid averages 100 Hz frames 4k+1 .. 4k+4, centred on 640k + 80, 240, 400 and 560: the four
10 ms hops tile [640k, 640(k+1)) exactly (25 ms windows reach 120 samples into each neighbour).
A clip of T samples gives `ResNet18Audio.output_lengths(T)` frames, as many as the encoder (this
is T // 640 except that a last block of >= 612 samples already counts as a frame, for both).

Locality (our choice). Every target of a frame depends only on samples within 240 samples of
its block, so the targets of a crop cut from a clip equal those of the clip on all but the
crop's first and last frame (where the clip sees real audio and the crop sees zeros). That is
why MFCCs are taken without librosa's top_db (which clips to 80 dB below the *clip's* peak),
the pitch tracker runs without its clip-relative silence gate (silence=0) and with an absolute
gate instead (a 10 ms frame whose 25 ms energy is below `silence_db`, -60 dBFS by default, is
unvoiced), and log F0 is not interpolated through unvoiced frames (PASE's Prosody does that;
here the F0 loss is simply masked where unvoiced). Pooling: log F0 is the mean over the voiced
100 Hz frames of the group (0 when none is voiced); voicing is the voiced fraction.
Why the pase `prosody()` function itself is not used: its voicing gate is relative to the
clip's loudest frame and its log F0 is interpolated over whole unvoiced stretches, both non-local,
and it would run the tracker a second time; its energy (RMS of 320 samples) and ZCR are
re-done here in two lines each, on the 400-sample window of the spectral features.

Cache. Targets are computed ONCE per manifest, not per step: `AttributeTargets` is written as a
pseudo-encoder (no weights, `config()` = the target settings + TARGET_VERSION) so that the
feature cache of `bench.data.feature_cache` stores them, with its locking, atomic rename and corruption checks:
`data_dir()/cache/targets/<key>/` holds the raw (unstandardised) targets of every clip of the
manifest, all splits, manifest row order, float16 [frames, 97] concatenated over clips, plus the
index (offsets, frame counts). The key is the cache's sha256 over (config, TARGET_VERSION inside
it, the manifest id, cache format, a constant weights digest); which attributes are trained does
not enter it, so every ablation of the heads shares one cache. float16 keeps about 3 significant
digits: at most 0.03 dB on log-mel values below 128 in magnitude, ~3 cents on log F0, far below
what a head learns. Building costs about 10 ms of one CPU thread per second of audio (most of it
the pitch tracker; it runs on cuda when there is one) plus the audio decoding.

Standardisation uses CORPUS statistics: per-dimension mean and std over every cached frame of the
manifest's train split (log F0: over voiced frames only, those with voicing >= 0.5), computed
right after the cache is built and stored beside it as `<key>.stats.json` (written atomically
under the cache's build lock; a manifest without train clips is refused). Voicing is left as it is (mean 0, std 1): a 0..1 flag the head
regresses with L1, so it learns the median, i.e. a voiced/unvoiced decision.

Loss. Per attribute the mean absolute error over valid entries: frames below both the crop's
output length and the end of the clip's cached targets; for prosody's log F0 additionally only
frames with voicing >= 0.5. The total is sum_a weight_a * L1_a (weights default to 1).

Without a manifest (`context.manifest is None`, unit tests feeding waveforms) or without `info`,
targets are computed on the fly from the given waveform (which is then the clean signal) and
standardised with the corpus statistics when the pretext has them, else with the statistics of
the batch's valid frames (as the PASE+ pretext does).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines import functional as AF
from baselines import spectral
from baselines.pase_workers import pitch
from bench.data.feature_cache import CachedFeatures, FeatureCache
from bench.errors import ConfigError
from bench.data.manifest import Manifest
from bench.files import atomic_write_bytes
from bench.paths import data_dir
from bench.pretrain.objective import CropInfo, Pretext, PretextContext
from encoders.resnet1d import HOP, ResNet18Audio

log = logging.getLogger("avbench.attributes")

# Bump when a change here changes the targets: cached targets get a new key.
TARGET_VERSION = 1
STATS_VERSION = 1
SAMPLE_RATE = 16_000
SUB_HOP = 160              # the 100 Hz frames the targets are computed on
SUBFRAMES = HOP // SUB_HOP  # 4 per 25 Hz frame
SHIFT = SUB_HOP // 2       # 100 Hz frame j is centred on sample SUB_HOP * j - SHIFT
ATTRIBUTES = ("mfcc", "logmel", "prosody")
PROSODY = ("log_f0", "voicing", "log_energy", "zcr")
VOICED = 0.5               # a 25 Hz frame counts as voiced (for the F0 loss and stats) at this fraction


def targets_root() -> Path:
    """Where target caches live: `data_dir()/cache/targets`."""
    return data_dir() / "cache" / "targets"


def subframe_centres(k: int | torch.Tensor) -> torch.Tensor:
    """Sample positions of the centres of the 100 Hz frames averaged into 25 Hz frame(s) k -> [..., 4]."""
    k = torch.as_tensor(k, dtype=torch.long)
    return HOP * k.unsqueeze(-1) + SHIFT + SUB_HOP * torch.arange(SUBFRAMES)


class AttributeTargets(nn.Module):
    """Waveform [B, T] -> raw attribute targets [B, K, 97] at 25 Hz and their frame counts [B].

    A pseudo-encoder for `bench.data.feature_cache.FeatureCache` (name, sample_rate, frame_rate, dim, config,
    forward(wav, lengths)); it has no weights. Columns: `self.slices[attribute]`; names:
    `self.names`. Values are raw (not standardised); frames beyond each clip's count are zero,
    and padding beyond `lengths` does not change valid frames.
    """

    name = "attribute-targets"
    sample_rate = SAMPLE_RATE
    frame_rate = SAMPLE_RATE / HOP

    def __init__(self, n_mfcc: int = 13, mfcc_mels: int = 40, n_mels: int = 80, f0_min: float = 60.0,
                 f0_max: float = 300.0, pitch_window: int = 640, voicing_threshold: float = 0.45,
                 silence_db: float = -60.0, energy_window: int = spectral.WIN_LENGTH) -> None:
        super().__init__()
        if not 0 < f0_min < f0_max < SAMPLE_RATE / 4:
            raise ConfigError(f"attribute targets: need 0 < f0_min < f0_max < {SAMPLE_RATE // 4} Hz, "
                              f"got {f0_min}, {f0_max}")
        if not math.ceil(SAMPLE_RATE / f0_min) < pitch_window <= 2 * HOP:
            raise ConfigError(f"attribute targets: pitch_window must be longer than one period of f0_min "
                              f"({math.ceil(SAMPLE_RATE / f0_min)} samples) and at most {2 * HOP}, "
                              f"got {pitch_window}")
        if not 0.0 < voicing_threshold < 1.0:
            raise ConfigError(f"attribute targets: voicing_threshold must lie in (0, 1), got {voicing_threshold}")
        if not 0 < energy_window <= 2 * HOP or energy_window % 2:
            raise ConfigError(f"attribute targets: energy_window must be an even number of samples in "
                              f"2..{2 * HOP}, got {energy_window}")
        # The spectral encoders (no CMVN, so raw values); their mel/DCT matrices are non-persistent
        # buffers, so this module has an empty state_dict, as the cache's weights digest expects.
        self.mfcc_fn = spectral.MFCC39(n_mfcc=n_mfcc, n_mels=mfcc_mels, top_db=None, normalize=False)
        self.logmel_fn = spectral.LogMel(n_mels=n_mels, normalize=False)
        self.f0_min, self.f0_max = float(f0_min), float(f0_max)
        self.pitch_window = int(pitch_window)
        self.voicing_threshold = float(voicing_threshold)
        self.silence_db = float(silence_db)
        self.energy_window = int(energy_window)
        self.dims = {"mfcc": int(n_mfcc), "logmel": int(n_mels), "prosody": len(PROSODY)}
        self.slices: dict[str, slice] = {}
        start = 0
        for a in ATTRIBUTES:
            self.slices[a] = slice(start, start + self.dims[a])
            start += self.dims[a]
        self.dim = start
        self.names = ([f"mfcc_{i}" for i in range(n_mfcc)] + [f"logmel_{i}" for i in range(n_mels)]
                      + list(PROSODY))
        self.f0_column = self.slices["prosody"].start + PROSODY.index("log_f0")
        self.voicing_column = self.slices["prosody"].start + PROSODY.index("voicing")

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return ResNet18Audio.output_lengths(lengths)

    def config(self) -> dict:
        return {"name": self.name, "target_version": TARGET_VERSION, "spectral_version": spectral.FEATURE_VERSION,
                "dim": self.dim, "frame_rate": self.frame_rate, "hop": HOP, "sub_hop": SUB_HOP, "shift": SHIFT,
                "columns": {a: [s.start, s.stop] for a, s in self.slices.items()}, "prosody": list(PROSODY),
                "mfcc": {k: v for k, v in self.mfcc_fn.config().items() if k not in ("name", "dim")},
                "logmel": {k: v for k, v in self.logmel_fn.config().items() if k not in ("name", "dim")},
                "f0_min": self.f0_min, "f0_max": self.f0_max, "pitch_window": self.pitch_window,
                "voicing_threshold": self.voicing_threshold, "silence_db": self.silence_db,
                "energy_window": self.energy_window, "f0_pool": "mean over voiced", "voiced_at": VOICED}

    def _windowed_mean(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """Mean of x [B, T] over `energy_window` samples centred on 160 j, j < n -> [B, n]."""
        half = self.energy_window // 2
        need = (n - 1) * SUB_HOP + half - x.shape[-1]  # right padding so that frame n-1 exists
        x = F.pad(x.unsqueeze(1), (half, half + max(0, need)))
        return F.avg_pool1d(x, self.energy_window, SUB_HOP).squeeze(1)[:, :n]

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        B, T = wav.shape
        wav = wav.float()
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=T)
        frames = self.output_lengths(lengths).to(wav.device)
        K = int(self.output_lengths(torch.tensor(T)))
        if K == 0:
            return wav.new_zeros(B, 0, self.dim), frames
        n = SUBFRAMES * K + 1  # 100 Hz frames 0..4K; frame 0 (centred on sample -80) is not used
        # Delay by SHIFT: frame j of the delayed clip is centred on original sample 160 j - 80.
        x = F.pad(wav * AF.length_mask(lengths, T).to(wav.dtype), (SHIFT, 0))
        xl = lengths + SHIFT
        # (1 + (T + 80) // 160 >= 4K + 1 frames for every T: the spectral features reach frame 4K.)
        mfcc, _ = self.mfcc_fn.mfcc(x, xl)                          # [B, 13, N]
        logmel, _ = self.logmel_fn(x, xl)                           # [B, N, 80]
        energy = self._windowed_mean(x.square(), n)                 # [B, n]
        log_energy = 10.0 * torch.log10(energy.clamp(min=1e-10))
        sign = x >= -1e-10  # as librosa: |x| <= 1e-10 counts as 0, and 0 as positive
        cross = torch.cat([torch.zeros_like(x[:, :1]), (sign[:, 1:] != sign[:, :-1]).to(x.dtype)], dim=1)
        cross = cross * AF.length_mask(xl, x.shape[-1]).to(x.dtype)  # no crossing into the padding
        zcr = self._windowed_mean(cross, n)
        # Every frame is "valid" to the tracker (its clip-relative gates are off): frames past the
        # clip's end hold zeros, whose autocorrelation is 0, so they come out unvoiced anyway.
        f0, voiced = pitch(x, torch.full((B,), n * SUB_HOP, device=x.device), n, f0_min=self.f0_min,
                           f0_max=self.f0_max, win=self.pitch_window, voicing_threshold=self.voicing_threshold,
                           silence=0.0)
        voiced = voiced & (log_energy > self.silence_db)
        lf0 = torch.log(f0.clamp(min=1.0))

        def pool(v: torch.Tensor) -> torch.Tensor:  # [B, n, D] -> [B, K, D]: groups 4k+1 .. 4k+4
            return v[:, 1:n].reshape(B, K, SUBFRAMES, v.shape[-1]).mean(dim=2)

        v = voiced.to(x.dtype).unsqueeze(-1)
        voicing = pool(v)
        f0_pooled = pool(lf0.unsqueeze(-1) * v) / voicing.clamp(min=1.0 / SUBFRAMES)
        prosody = torch.cat([f0_pooled, voicing, pool(log_energy.unsqueeze(-1)), pool(zcr.unsqueeze(-1))], dim=-1)
        out = torch.cat([pool(mfcc[..., :n].transpose(1, 2)), pool(logmel[:, :n]), prosody], dim=-1)
        return out * AF.length_mask(frames, K).unsqueeze(-1).to(out.dtype), frames


# ----------------------------------------------------------------------------- cache and statistics
def target_cache(targets: AttributeTargets, root: str | Path | None = None) -> FeatureCache:
    return FeatureCache(Path(root) if root is not None else targets_root())


def target_cache_key(targets: AttributeTargets, manifest: Manifest, root: str | Path | None = None) -> str:
    """The cache key of (target config incl. TARGET_VERSION, manifest)."""
    return target_cache(targets, root).key(targets, manifest)


def corpus_statistics(cached: CachedFeatures, manifest: Manifest, targets: AttributeTargets,
                      split: str = "train", progress: bool = False) -> dict[str, Any]:
    """Per-dimension mean/std over the cached frames of `split` (log F0: voiced frames only; voicing: 0/1)."""
    from tqdm import tqdm

    rows = np.flatnonzero((manifest.table["split"] == split).to_numpy())
    if len(rows) == 0:
        raise ConfigError(f"{manifest.path}: no clips in split {split!r}; the attribute pretext standardises "
                          f"its targets with the statistics of the {split} split.")
    if cached.clip_ids[int(rows[0])] != str(manifest.table["clip_id"].iloc[int(rows[0])]):
        raise ConfigError(f"{cached.path}: target cache does not follow the rows of {manifest.path}")
    D, f0c, vc = targets.dim, targets.f0_column, targets.voicing_column
    total, square, count = np.zeros(D), np.zeros(D), 0
    f0_sum, f0_sq, f0_count = 0.0, 0.0, 0
    chunk: list[np.ndarray] = []

    def flush() -> None:
        nonlocal total, square, count, f0_sum, f0_sq, f0_count
        if not chunk:
            return
        x = np.concatenate(chunk).astype(np.float64)
        chunk.clear()
        total += x.sum(0)
        square += np.square(x).sum(0)
        count += x.shape[0]
        f0 = x[x[:, vc] >= VOICED, f0c]
        f0_sum += f0.sum()
        f0_sq += np.square(f0).sum()
        f0_count += f0.size

    for r in tqdm(rows, desc="target statistics", unit="clip", disable=not progress):
        chunk.append(cached.get(int(r)))
        if len(chunk) >= 1024:
            flush()
    flush()
    if count == 0:
        raise ConfigError(f"{manifest.path}: the {split} clips give no 25 Hz frames (all shorter than 40 ms)")
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean ** 2, 0.0))
    if f0_count:
        mean[f0c] = f0_sum / f0_count
        std[f0c] = math.sqrt(max(f0_sq / f0_count - mean[f0c] ** 2, 0.0))
    else:
        log.warning("%s: no voiced frame in the %s split; log F0 is left unstandardised", manifest.path, split)
        mean[f0c], std[f0c] = 0.0, 1.0
    mean[vc], std[vc] = 0.0, 1.0
    std = np.maximum(std, 1e-3)  # a constant dimension (digital silence) stays finite
    return {"stats_version": STATS_VERSION, "key": cached.key, "split": split, "clips": int(len(rows)),
            "frames": int(count), "voiced_frames": int(f0_count), "names": targets.names,
            "mean": mean.tolist(), "std": std.tolist()}


def cached_targets(targets: AttributeTargets, manifest: Manifest, root: str | Path | None = None, *,
                   progress: bool = True, device: str | None = None,
                   batch_size: int = 32) -> tuple[CachedFeatures, dict[str, Any]]:
    """Open (building it first if needed) the target cache of `manifest`, and its train statistics.

    `targets` itself is not moved: the build runs a copy on `device` (default: cuda when available).
    """
    cache = target_cache(targets, root)
    builder = AttributeTargets(**_target_kwargs(targets))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cached = cache.get_or_build(builder, manifest, batch_size=batch_size, device=device, progress=progress)
    stats_path = cache.root / f"{cached.key}.stats.json"
    stats = _read_stats(stats_path, cached.key)
    if stats is None:
        with cache._locked(cached.key):  # one process computes them; the others wait and read
            stats = _read_stats(stats_path, cached.key)
            if stats is None:
                stats = corpus_statistics(cached, manifest, targets, "train", progress=progress)
                atomic_write_bytes(stats_path, (json.dumps(stats, indent=1) + "\n").encode())
    if len(stats["mean"]) != targets.dim:
        raise ConfigError(f"{stats_path}: statistics of {len(stats['mean'])} dimensions for {targets.dim} targets; "
                          "delete the file to recompute it")
    return cached, stats


def _read_stats(path: Path, key: str) -> dict | None:
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s is damaged; recomputing the target statistics", path)
        return None
    if stats.get("key") != key or stats.get("stats_version") != STATS_VERSION:
        return None
    return stats


def _target_kwargs(t: AttributeTargets) -> dict:
    return dict(n_mfcc=t.dims["mfcc"], mfcc_mels=t.mfcc_fn.n_mels, n_mels=t.dims["logmel"], f0_min=t.f0_min,
                f0_max=t.f0_max, pitch_window=t.pitch_window, voicing_threshold=t.voicing_threshold,
                silence_db=t.silence_db, energy_window=t.energy_window)


# ----------------------------------------------------------------------------- the pretext
class AttributeHead(nn.Module):
    """Linear(dim, hidden) - ReLU - Linear(hidden, out), frame by frame on [B, T', dim]."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttributePretext(Pretext):
    """Regress MFCC / log-mel / prosody of every 40 ms frame from the encoder's features (module docstring).

    Heads: one `AttributeHead` per attribute, encoder.dim -> hidden (256) -> 13 / 80 / 4 (with a
    512-d encoder: 134,669 / 151,888 / 132,356 parameters). forward returns {"loss": sum_a w_a *
    L1_a, "loss_<a>": L1_a for each chosen attribute}.
    """

    crop_align = HOP  # crops start on the 25 Hz grid: cached targets are sliced at start // 640

    def __init__(self, encoder: nn.Module, context: PretextContext, attributes: Sequence[str] = ATTRIBUTES,
                 weights: Mapping[str, float] | None = None, hidden: int = 256,
                 target_settings: Mapping[str, Any] | None = None, cache_root: str | Path | None = None,
                 cache_device: str | None = None, progress: bool = True) -> None:
        super().__init__()
        rate = getattr(encoder, "sample_rate", SAMPLE_RATE)
        if rate != SAMPLE_RATE or float(encoder.frame_rate) != SAMPLE_RATE / HOP:
            raise ConfigError(f"attribute pretext: the encoder must read {SAMPLE_RATE} Hz audio and give "
                              f"{SAMPLE_RATE / HOP:g} frames per second on the 640-sample grid (got "
                              f"{getattr(encoder, 'sample_rate', '?')} Hz, {encoder.frame_rate} fps)")
        attributes = tuple(attributes)
        unknown = sorted(set(attributes) - set(ATTRIBUTES))
        if unknown or not attributes or len(set(attributes)) != len(attributes):
            raise ConfigError(f"attribute pretext: attributes must be distinct names among {', '.join(ATTRIBUTES)}, "
                              f"got {list(attributes)}")
        weights = dict(weights or {})
        bad = sorted(set(weights) - set(attributes))
        if bad:
            raise ConfigError(f"attribute pretext: weights given for {bad}, which are not among the chosen "
                              f"attributes {list(attributes)}")
        for a, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ConfigError(f"attribute pretext: weight of {a!r} must be a finite number >= 0, got {w!r}")
        if int(hidden) < 1:
            raise ConfigError(f"attribute pretext: hidden must be a positive int, got {hidden}")
        self.encoder = encoder
        self.context = context
        self.attributes = attributes
        self.weights = {a: float(weights.get(a, 1.0)) for a in attributes}
        self.hidden = int(hidden)
        self.target_fn = AttributeTargets(**dict(target_settings or {}))
        dim = int(encoder.dim)
        self.heads = nn.ModuleDict({a: AttributeHead(dim, self.hidden, self.target_fn.dims[a]) for a in attributes})
        self.cache: CachedFeatures | None = None
        self.stats: dict[str, Any] | None = None
        if context.manifest is not None:
            # Built here, not at the first step: the loop makes the pretext once the manifest is resolved.
            self.cache, self.stats = cached_targets(self.target_fn, context.manifest, cache_root,
                                                    progress=progress, device=cache_device)
            self.register_buffer("target_mean", torch.tensor(self.stats["mean"], dtype=torch.float32),
                                 persistent=False)
            self.register_buffer("target_std", torch.tensor(self.stats["std"], dtype=torch.float32),
                                 persistent=False)

    def config(self) -> dict:
        return {"attributes": list(self.attributes), "weights": dict(self.weights), "hidden": self.hidden,
                "targets": self.target_fn.config(), "target_cache": None if self.cache is None else self.cache.key,
                "standardisation": "per-batch" if self.stats is None else
                f"corpus {self.stats['split']} split ({self.stats['frames']} frames)"}

    # --- targets -----------------------------------------------------------------------------
    def targets(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised targets [B, K, 97] and valid frame counts [B] of the crops (zero beyond)."""
        raw, frames = self.raw_targets(wav, lengths, info)
        return self.standardise(raw, frames), frames

    def raw_targets(self, wav: torch.Tensor, lengths: torch.Tensor,
                    info: CropInfo | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw targets of the crops: sliced from the cache with `info`, else computed from `wav`."""
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        if info is None:
            with torch.no_grad():
                return self.target_fn(wav, lengths)
        if self.cache is None:
            raise ConfigError("attribute pretext: crops came with CropInfo but the pretext has no manifest "
                              "(context.manifest is None), so there are no cached targets to slice")
        starts = torch.as_tensor(info.starts).to(torch.long).cpu()
        if bool((starts % HOP != 0).any()):
            raise ValueError(f"attribute pretext: crop starts {starts.tolist()} are not multiples of {HOP}; the "
                             f"pretraining loop must honour crop_align={self.crop_align}")
        want = self.target_fn.output_lengths(lengths.cpu()).tolist()
        K = int(self.target_fn.output_lengths(torch.tensor(wav.shape[-1])))
        out = torch.zeros(len(want), K, self.target_fn.dim)
        frames = torch.zeros(len(want), dtype=torch.long)
        for b, (row, clip_id, start, n) in enumerate(zip(info.rows, info.clip_ids, starts.tolist(), want)):
            if self.cache.clip_ids[row] != str(clip_id):
                raise ValueError(f"attribute pretext: crop {b} says row {row} is clip {clip_id!r}, but the target "
                                 f"cache has {self.cache.clip_ids[row]!r} there (another manifest?)")
            piece = self.cache.get(row)[start // HOP:start // HOP + min(n, K)]
            frames[b] = piece.shape[0]
            out[b, :piece.shape[0]] = torch.from_numpy(piece.astype(np.float32))
        return out.to(wav.device), frames.to(wav.device)

    def standardise(self, raw: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """(raw - mean) / std with the corpus statistics, or those of the batch's valid frames."""
        if self.stats is not None:
            mean, std = self.target_mean.to(raw), self.target_std.to(raw)
        else:
            mean, std = _batch_stats(raw, frames, self.target_fn.f0_column, self.target_fn.voicing_column)
        z = (raw - mean) / std
        return z * AF.length_mask(frames, raw.shape[1]).unsqueeze(-1).to(z.dtype)

    # --- objective ---------------------------------------------------------------------------
    def forward(self, wav: torch.Tensor, lengths: torch.Tensor,
                info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        feats, out_len = self.encoder(wav, lengths)
        return self.loss_from_features(feats, out_len, wav, lengths, info)

    def loss_from_features(self, feats: torch.Tensor, out_len: torch.Tensor, wav: torch.Tensor,
                           lengths: torch.Tensor, info: CropInfo | None = None) -> dict[str, torch.Tensor]:
        """The objective on already computed 25 Hz features (for objectives that share them)."""
        target, t_len = self.targets(wav, lengths, info)
        common = min(feats.shape[1], target.shape[1])
        valid = AF.length_mask(torch.minimum(out_len.to(wav.device), t_len), common)  # [B, common]
        target, feats = target[:, :common], feats[:, :common]
        voiced = target[..., self.target_fn.voicing_column] >= VOICED  # voicing is stored unstandardised
        losses: dict[str, torch.Tensor] = {}
        for a in self.attributes:
            cols = self.target_fn.slices[a]
            pred = self.heads[a](feats)
            mask = valid.unsqueeze(-1).expand(-1, -1, pred.shape[-1])
            if a == "prosody":
                f0 = PROSODY.index("log_f0")
                mask = mask.clone()
                mask[..., f0] &= voiced
            m = mask.to(pred.dtype)
            losses[a] = ((pred - target[..., cols]).abs() * m).sum() / m.sum().clamp(min=1.0)
        total = sum(self.weights[a] * losses[a] for a in self.attributes)
        return {"loss": total, **{f"loss_{a}": v for a, v in losses.items()}}


def _batch_stats(raw: torch.Tensor, frames: torch.Tensor, f0c: int, vc: int,
                 eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean/std over the valid frames of a batch (log F0: voiced ones; voicing: 0/1)."""
    m = AF.length_mask(frames, raw.shape[1]).to(raw.dtype).unsqueeze(-1)  # [B, K, 1]
    count = m.sum().clamp(min=1.0)
    mean = (raw * m).sum(dim=(0, 1)) / count
    var = ((raw - mean).square() * m).sum(dim=(0, 1)) / count
    v = m[..., 0] * (raw[..., vc] >= VOICED).to(raw.dtype)
    nv = v.sum().clamp(min=1.0)
    f0_mean = (raw[..., f0c] * v).sum() / nv
    f0_var = ((raw[..., f0c] - f0_mean).square() * v).sum() / nv
    mean, var = mean.clone(), var.clone()
    mean[f0c], var[f0c] = f0_mean, f0_var
    mean[vc], var[vc] = 0.0, 1.0 - eps
    return mean, torch.sqrt(var + eps)


_PRETEXT_KWARGS = tuple(p for p in inspect.signature(AttributePretext.__init__).parameters
                        if p not in ("self", "encoder", "context"))


def attribute_pretext(encoder: nn.Module, context: PretextContext, **kwargs) -> AttributePretext:
    """Pretext factory for `av-audio` (register with `register_pretext("av-audio")`); keywords as AttributePretext."""
    unknown = sorted(set(kwargs) - set(_PRETEXT_KWARGS))
    if unknown:
        raise ConfigError(f"attribute pretext: unknown settings {unknown}; known: {', '.join(_PRETEXT_KWARGS)}")
    return AttributePretext(encoder, context, **kwargs)
