"""The frozen-feature cache: run an encoder over a manifest once, read its features many times.

Frozen-encoder probes train for many epochs on features that never change, so the encoder runs
once per (weights, config, manifest, preprocessing) and its outputs are kept on disk, one entry
per key under `data_dir()/cache/features` (bench.data.cache_entry: the entry's layout, reading and
crash-safe publication).

Key. `FeatureCache.key` is a sha256 over `encoder.config()`, a digest of the encoder's
state_dict (names, shapes, dtypes and bytes of every tensor), the manifest's content id, the
preprocessing the cache applies, the forward precision when it is not fp32 (bf16 features
differ; fp32 adds nothing, so entries built before the option keep their keys), and
`CACHE_FORMAT_VERSION`. The device is not in the key: it is recorded in the entry's meta. A new checkpoint, config, manifest
or crop gives a new key, so an entry is never stale; entries are never updated in place.

Reuse across manifests. Before running the encoder, a builder copies the clips from a complete
entry of the same encoder, weights and preprocessing whose manifest held every clip of this one
from the same audio (bench.data.cache_reuse says exactly when).

Concurrency. A builder holds an exclusive lock on its key and re-checks for the entry after
taking it, so two processes (or jobs of a sweep) asking for the same key compute it once: the
second waits and then reads. Different keys have different locks and build in parallel.

Reading needs only numpy: torch, pandas and scipy are imported when an entry is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from bench.data.cache_entry import (CACHE_FORMAT_VERSION, CacheError, CachedFeatures, CacheStats, FeatureError,
                                    ShardWriter, fsync_dir, key_lock, remove_stale_partials, write_index_and_meta)
from bench.data.cache_reuse import copy_from, find_donor
from bench.errors import ConfigError
from bench.paths import data_dir

if TYPE_CHECKING:
    import torch

    from bench.data.manifest import Manifest
    from bench.registry import Encoder

log = logging.getLogger("avbench.cache")

# A shard file holds up to this many bytes of features (unless one clip alone is larger).
SHARD_BYTES = 512 * 1024 * 1024
FP16_MAX = 65504.0

# Preprocessing the cache itself applies before the encoder, with defaults (None: the encoder's).
PREPROCESSING_DEFAULTS: dict[str, Any] = {
    "sample_rate": None,  # load_audio resamples every clip to this rate; must be the encoder's
    "max_seconds": None,  # keep the first max_seconds of each clip (None: whole clip)
}

# Clips are sorted by length within windows of consecutive clips (at most this many batches and
# about this many bytes of float16 features): sorting cuts padding, the window bounds the
# features held in memory before they are written back in manifest order.
SORT_WINDOW_BATCHES = 32
SORT_WINDOW_BYTES = 256 * 1024 * 1024


def weights_digest(module: "torch.nn.Module") -> str:
    """sha256 over every state_dict tensor (name, shape, dtype, bytes), in name order.

    Bytes rather than e.g. a checkpoint path or mtime: a re-saved identical checkpoint keeps its
    key, a fine-tuned one under the same file name does not. A module without parameters or
    buffers hashes to the digest of nothing, a constant.
    """
    return state_digest(module.state_dict())


def state_digest(state: dict) -> str:
    """weights_digest of a state_dict itself (e.g. one loaded from a checkpoint file)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            h.update(json.dumps([name, repr(t)]).encode())
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(json.dumps([name, list(t.shape), str(t.dtype)]).encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


class _ClipAudio:
    """Map-style dataset (torch's protocol) of cropped 16 kHz waveforms, for the build loader."""

    def __init__(self, paths: Sequence[str], sample_rate: int, max_samples: int | None):
        self.paths, self.sample_rate, self.max_samples = list(paths), sample_rate, max_samples

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        from bench.data.audio import load_audio

        wav = load_audio(self.paths[i], self.sample_rate)
        if self.max_samples is not None:
            wav = wav[: self.max_samples]
        return i, wav


def _as_list(batch: list) -> list:
    return batch


class FeatureCache:
    """Content-addressed store of frozen-encoder features, one entry per key."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else data_dir() / "cache" / "features"

    # ----- keys -------------------------------------------------------------------------------

    def key(self, encoder: "Encoder", manifest: "Manifest", preprocessing: dict | None = None,
            precision: str = "fp32") -> str:
        """The entry key: equal inputs give equal keys across processes and machines."""
        return self._key_inputs(encoder, manifest, preprocessing, precision)[0]

    def _key_inputs(self, encoder: "Encoder", manifest: "Manifest",
                    preprocessing: dict | None, precision: str = "fp32") -> tuple[str, dict]:
        from bench.device import check_precision

        name = getattr(encoder, "name", type(encoder).__name__)
        config = encoder.config()
        try:
            json.dumps(config, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"encoder {name!r}: config() must return plain JSON values (str, "
                              f"int, float, bool, None, lists, dicts) since it feeds the feature-"
                              f"cache key; got {config!r} ({exc})") from exc
        inputs = {
            "format_version": CACHE_FORMAT_VERSION,
            "encoder_config": config,
            "weights_sha256": weights_digest(encoder),
            "manifest_id": manifest.manifest_id,
            "preprocessing": self._preprocessing(encoder, preprocessing),
        }
        if check_precision(precision) != "fp32":
            inputs["precision"] = precision
        blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:32], inputs

    @staticmethod
    def _preprocessing(encoder: "Encoder", preprocessing: dict | None) -> dict:
        """Fill defaults and check values, so {} and {"sample_rate": 16000} share a key."""
        given = dict(preprocessing or {})
        unknown = sorted(set(given) - set(PREPROCESSING_DEFAULTS))
        if unknown:
            raise ConfigError(f"preprocessing key(s) {unknown} are not applied by the feature "
                              f"cache; it supports {sorted(PREPROCESSING_DEFAULTS)}. Put other "
                              "choices that change features in the encoder's config().")
        out = {**PREPROCESSING_DEFAULTS, **given}
        sr = int(getattr(encoder, "sample_rate", 16_000))
        if out["sample_rate"] is None:
            out["sample_rate"] = sr
        if out["sample_rate"] != sr:
            raise ConfigError(f"preprocessing sample_rate={out['sample_rate']!r} but encoder "
                              f"{getattr(encoder, 'name', '?')!r} expects {sr} Hz audio; leave "
                              "sample_rate out to use the encoder's rate")
        out["sample_rate"] = sr  # 16000.0 and 16000 must give one key
        if out["max_seconds"] is not None:
            m = out["max_seconds"]
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not np.isfinite(m) or m <= 0:
                raise ConfigError(f"preprocessing max_seconds must be a positive number of "
                                  f"seconds or None, got {m!r}")
            out["max_seconds"] = float(m)
        return out

    # ----- building ---------------------------------------------------------------------------

    def entry_path(self, key: str) -> Path:
        return self.root / key

    def get_or_build(self, encoder: "Encoder", manifest: "Manifest", preprocessing: dict | None = None,
                     *, batch_size: int = 16, device: str = "cpu", progress: bool = True,
                     num_workers: int | None = None, precision: str = "fp32") -> CachedFeatures:
        """Open the entry for (encoder, manifest, preprocessing, precision), building it first if needed.

        The encoder is moved to `device` (nn.Module.to works in place) and run in eval mode, under
        autocast for precision bf16/fp16; its train/eval mode is restored afterwards. `num_workers` audio-loading processes (None: 0
        below 512 clips, else one per core but one, at most 4) feed the encoder.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        key, inputs = self._key_inputs(encoder, manifest, preprocessing, precision)
        final = self.entry_path(key)
        if final.is_dir():  # entries appear by an atomic rename: a folder here is complete
            return CachedFeatures.open(final)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked(key):
            if final.is_dir():  # another process built it while this one waited
                return CachedFeatures.open(final)
            remove_stale_partials(self.root, key)
            started = time.monotonic()
            partial = self.root / f".{key}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            partial.mkdir()
            try:
                donor = find_donor(self.root, manifest, inputs)
                if donor is not None:
                    meta = copy_from(donor, manifest, inputs, key, partial, started=started, shard_limit=SHARD_BYTES)
                else:
                    meta = self._build(encoder, manifest, inputs, key, partial, batch_size=batch_size,
                                       device=device, progress=progress, num_workers=num_workers,
                                       started=started)
                fsync_dir(partial)
                os.rename(partial, final)
                fsync_dir(self.root)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            seconds = time.monotonic() - started
            derived = meta.get("derived_from")
            log.info("cached %d clips of %s in %.1f s at %s%s", meta["num_clips"], meta["encoder"],
                     seconds, final, f" (copied from entry {derived})" if derived else "")
            forward = 0 if derived else int(meta["num_clips"])
            return CachedFeatures.open(final, CacheStats(forward_clips=forward, hit=False,
                                                         build_seconds=seconds, derived_from=derived))

    def _locked(self, key: str):
        return key_lock(self.root / f"{key}.lock", key)

    def _build(self, encoder: "Encoder", manifest: "Manifest", inputs: dict, key: str, folder: Path,
               *, batch_size: int, device: str, progress: bool, num_workers: int | None,
               started: float) -> dict:
        import torch
        from torch.utils.data import DataLoader
        from tqdm import tqdm

        from bench.device import autocast, device_name

        name = getattr(encoder, "name", type(encoder).__name__)
        dim = int(getattr(encoder, "dim", 0) or 0)
        if dim <= 0:
            raise ConfigError(f"encoder {name!r} declares dim={dim}; an Encoder must set dim to its "
                              "feature size before its features can be cached")
        table = manifest.table
        clip_ids = table["clip_id"].astype(str).tolist()
        paths = [str(manifest.resolve(p)) for p in table["audio_path"].astype(str)]
        prep = inputs["preprocessing"]
        sr = int(prep["sample_rate"])
        max_samples = None if prep["max_seconds"] is None else max(1, round(prep["max_seconds"] * sr))
        # Expected samples after resampling (and crop), for sorting only: no file is opened.
        planned = np.ceil(table["num_samples"].to_numpy(np.float64) * sr
                          / table["sample_rate"].to_numpy(np.float64)).astype(np.int64)
        if max_samples is not None:
            planned = np.minimum(planned, max_samples)

        frame_bytes = (planned / sr * float(encoder.frame_rate) + 1) * dim * 2
        windows = list(_windows(planned, frame_bytes, batch_size, SORT_WINDOW_BATCHES * batch_size,
                                SORT_WINDOW_BYTES))
        batches = [b for w in windows for b in w]
        last_of_window = {int(b) for b in np.cumsum([len(w) for w in windows]) - 1}
        if num_workers is None:  # worker start-up costs more than it saves on a few hundred clips
            num_workers = 0 if len(clip_ids) < 512 else min(4, max(0, (os.cpu_count() or 1) - 1))
        import bench.data.audio  # noqa: F401  (imported once here, so forked workers inherit scipy)

        loader = DataLoader(_ClipAudio(paths, sr, max_samples), batch_sampler=batches,
                            num_workers=num_workers, collate_fn=_as_list,
                            prefetch_factor=4 if num_workers else None,
                            # Its own generator: a loader draws a seed when it starts, and a build
                            # must not move the global torch stream, or whatever is initialised
                            # after it (a pretext's generator) would differ between a cache miss
                            # and a hit.
                            generator=torch.Generator().manual_seed(0))
        writer = ShardWriter(folder, SHARD_BYTES)
        pending: dict[int, np.ndarray] = {}
        written = 0
        was_training = encoder.training
        encoder.to(device)
        encoder.eval()
        try:
            with torch.inference_mode(), tqdm(total=len(clip_ids), unit="clip", disable=not progress,
                                               desc=f"caching {name}") as bar:
                for b, items in enumerate(loader):
                    idx = [i for i, _ in items]
                    with autocast(torch.device(device), inputs.get("precision", "fp32")):
                        feats = self._forward(encoder, name, dim, [w for _, w in items], device,
                                              [clip_ids[i] for i in idx], [paths[i] for i in idx])
                    pending.update(zip(idx, feats))
                    bar.update(len(idx))
                    if b in last_of_window:  # everything up to here is done: write in order
                        while written in pending:
                            writer.append(pending.pop(written))
                            written += 1
            if pending or written != len(clip_ids):
                raise CacheError(f"internal error: {len(pending)} clips computed but not written "
                                 f"while building {folder}")
            index = writer.close()
        finally:
            encoder.train(was_training)
            writer.abort()
        return write_index_and_meta(folder, key, inputs, manifest.path, clip_ids, writer, index, started, {
            "encoder": name,
            "encoder_class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
            "dim": dim,
            "frame_rate": float(encoder.frame_rate),
            "batch_size": batch_size,
            "device": str(device),
            "device_name": device_name(torch.device(device)),
            "precision": inputs.get("precision", "fp32"),
        })

    @staticmethod
    def _forward(encoder: "Encoder", name: str, dim: int, wavs: list[np.ndarray], device: str,
                 clip_ids: list[str], paths: list[str]) -> list[np.ndarray]:
        """Run one padded batch; check it; return each clip's valid frames as float16 arrays.

        Checks and the float16 cast run on the whole batch; only a failing clip is looked at on
        its own, to name it and say what is wrong.
        """
        import torch

        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long)
        batch = torch.zeros(len(wavs), int(lengths.max()), dtype=torch.float32)
        for i, w in enumerate(wavs):
            batch[i, : len(w)] = torch.from_numpy(w)
        out = encoder(batch.to(device), lengths.to(device))
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise FeatureError(f"encoder {name!r} returned {type(out).__name__}; forward must return "
                               "(feats [B, T', dim], lengths' [B])")
        feats, out_lengths = out
        if feats.dim() != 3 or feats.shape[0] != len(wavs) or feats.shape[2] != dim:
            raise FeatureError(f"encoder {name!r} returned features of shape {tuple(feats.shape)} "
                               f"for a batch of {len(wavs)}; expected [{len(wavs)}, T', {dim}] "
                               "(dim as declared by the encoder)")
        out_lengths = out_lengths.detach().reshape(-1).to(feats.device, torch.long)
        if out_lengths.numel() != len(wavs) or bool((out_lengths > feats.shape[1]).any()):
            raise FeatureError(f"encoder {name!r} returned lengths' {out_lengths.tolist()} for "
                               f"{feats.shape[1]} output frames; expected {len(wavs)} values, none "
                               "above the frame count")
        feats = feats.detach().float()  # autocast gives bf16/fp16; the checks and the cast read fp32
        n_frames = out_lengths.cpu().tolist()
        peaks = _frame_peaks(feats)
        for i, n in enumerate(n_frames):
            # NaN propagates through max, and values beyond float16 are seen before the cast
            # would turn them into inf; only a failing clip is looked at closely.
            peak = float(peaks[i, :n].max()) if n else float("nan")
            if not np.isfinite(peak) or peak > FP16_MAX:
                FeatureCache._check(feats[i, :n].float().cpu().numpy(), name, clip_ids[i], paths[i])
        host = feats.to(torch.float16).cpu().numpy()
        return [host[i, :n].copy() for i, n in enumerate(n_frames)]  # compact, not views of the batch

    @staticmethod
    def _check(f: np.ndarray, name: str, clip_id: str, path: str) -> None:
        """Raise FeatureError naming the encoder and the clip if `f` cannot be stored."""
        if f.shape[0] == 0:
            raise FeatureError(f"encoder {name!r} produced no frames for clip {clip_id!r} ({path}); "
                               "the clip is shorter than the encoder's receptive field. Remove it "
                               "from the manifest or use preprocessing without a crop this short.")
        peak = float(np.max(np.abs(f)))  # NaN propagates through max
        if not np.isfinite(peak):
            bad = int((~np.isfinite(f)).sum())
            raise FeatureError(f"encoder {name!r} produced {bad} NaN/Inf value(s) for clip "
                               f"{clip_id!r} ({path}); features must be finite. Check the "
                               "checkpoint and the encoder on this clip.")
        if peak > FP16_MAX:
            raise FeatureError(f"encoder {name!r} produced values up to {peak:.4g} for clip "
                               f"{clip_id!r} ({path}), beyond the float16 range (±{FP16_MAX:g}) of "
                               "the feature cache. Scale or normalise the encoder's output.")



def _frame_peaks(feats: "torch.Tensor") -> np.ndarray:
    """max |x| of every frame, [B, T'] float32 on the host (NaN where a frame holds a NaN).

    On the CPU numpy's max/min over the feature axis is several times faster than torch's
    (measured: 0.8 ms against 5-16 ms for a [64, 26, 512] batch); on a GPU the reduction stays
    on the device and only [B, T'] values cross to the host.
    """
    import torch

    if feats.device.type == "cpu":
        x = feats.float().numpy()
        return np.maximum(x.max(axis=2), -x.min(axis=2))
    x = feats.float()
    return torch.maximum(x.amax(dim=2), -x.amin(dim=2)).cpu().numpy()


def _windows(planned: np.ndarray, feature_bytes: np.ndarray, batch_size: int, max_clips: int,
             max_bytes: float) -> Iterator[list[list[int]]]:
    """Batches of clip indices, longest first within each window of consecutive clips.

    A window ends after `max_clips` clips or once its expected features exceed `max_bytes`
    (but holds at least one batch), which bounds what is held before it is written.
    """
    start, n = 0, len(planned)
    while start < n:
        stop, total = start, 0.0
        while stop < n and stop - start < max_clips and (stop - start < batch_size or total < max_bytes):
            total += float(feature_bytes[stop])
            stop += 1
        idx = np.arange(start, stop)
        idx = idx[np.argsort(-planned[idx], kind="stable")]
        yield [idx[i: i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
        start = stop
