"""The frozen-feature cache: run an encoder over a manifest once, read its features many times.

Frozen-encoder probes train for many epochs on features that never change, so the encoder runs
once per (weights, config, manifest, preprocessing) and its outputs are kept on disk.

Key. `FeatureCache.key` is a sha256 over `encoder.config()`, a digest of the encoder's
state_dict (names, shapes, dtypes and bytes of every tensor), the manifest's content id, the
preprocessing the cache applies, and `CACHE_FORMAT_VERSION`. A new checkpoint, config, manifest
or crop gives a new key, so an entry is never stale; entries are never updated in place.

Layout of one entry, `<root>/<key>/` (root defaults to `data_dir()/cache/features`):
  shard-00000.f16, ...  float16, row-major [frames, dim]: the features of every clip of the
                        manifest (all splits, manifest row order) concatenated along time. A clip
                        never spans two shards; a shard holds up to SHARD_BYTES (512 MiB) unless
                        one clip alone is larger. Raw bytes, so `np.memmap` or `np.fromfile` can
                        open them without this module.
  index.npz             per clip: clip_ids, shard, offset (in frames, within the shard), frames
  meta.json             the key inputs in readable form, dim, frame_rate, sizes, build time

Crash safety. An entry is written into a sibling `.<key>.partial-<pid>-<random>` folder and
renamed into place (one atomic os.rename) only once every file is complete and fsynced. A
killed build therefore leaves only a dot-folder that is never read, and that the next builder
removes. An entry whose files do not match its meta.json (a truncated copy, a full disk) is
refused with an error that names the folder and says to delete it.

Reuse across manifests. Task variants select or re-split the clips of one corpus (an accent
subset, a speaker-id split, a noise condition), and each is a new manifest with a new key. Before
running the encoder, a builder looks for a complete entry with the same encoder config, weights,
preprocessing and format whose manifest held every clip of this one from the same audio: same
clip id, same resolved audio path, sample count and rate, and an audio file not modified since
that entry was built. The donor's manifest must still be the file it was built from (its content
id is checked), since that is the only record of which audio its rows came from. If one is found,
the clips' features are copied from it in this manifest's order (`meta.json` names it in
`derived_from`) and the encoder never runs. The encoder contract makes a clip's features
independent of the other clips padded into its batch, so the copy holds what a fresh build would,
up to the float rounding of batched kernels. Partial coverage is not used: a donor must hold
every clip.

Concurrency. A builder holds an exclusive `fcntl.flock` on `<root>/<key>.lock` and re-checks for
the entry after taking it, so two processes (or jobs of a sweep) asking for the same key compute
it once: the second waits and then reads. Different keys have different locks and build in
parallel. Lock files are left in place: deleting one while another process waits on it would
let a third process lock a new file of the same name and build the key twice.

Reading: `os.preadv` into a fresh buffer, not `np.memmap`. Pages of a memory-mapped file that
have been touched stay mapped into the process and count in its RSS until the kernel reclaims
them, so one random pass over a memmapped cache larger than the memory budget grows RSS to the
size of the cache: DataLoader workers look like they leak, and job schedulers or RSS-based
limits kill the run. Periodic `madvise(MADV_DONTNEED)` would bound that, but needs tuning and
bookkeeping of what each worker touched. A positioned read costs one extra memcpy per clip
(microseconds next to the Python overhead of a get), keeps only the clip being read resident,
leaves caching to the kernel's page cache (shared, not charged to RSS), and works under
`RLIMIT_AS`. `benchmarks/cache_benchmark.py` measures both.

Reading needs only numpy: torch, pandas and scipy are imported when an entry is built, so a
reader process (or a benchmark measuring its memory) carries none of them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from bench.errors import ConfigError
from bench.paths import data_dir

if TYPE_CHECKING:
    import torch

    from bench.data.manifest import Manifest
    from bench.registry import Encoder

log = logging.getLogger("avbench.cache")

# Bump when the layout or the way features are computed changes: old entries get new keys.
CACHE_FORMAT_VERSION = 1

SHARD_BYTES = 512 * 1024 * 1024
FP16_MAX = 65504.0
META_NAME = "meta.json"
INDEX_NAME = "index.npz"

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


class CacheError(RuntimeError):
    """A cache entry that cannot be built or read. The message names the folder and the fix."""


class CorruptCacheError(CacheError):
    """An entry whose files do not match its meta.json."""


class FeatureError(CacheError):
    """An encoder produced features the cache refuses to store (NaN/Inf, beyond float16, bad shape)."""


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.f16"


def weights_digest(module: "torch.nn.Module") -> str:
    """sha256 over every state_dict tensor (name, shape, dtype, bytes), in name order.

    Bytes rather than e.g. a checkpoint path or mtime: a re-saved identical checkpoint keeps its
    key, a fine-tuned one under the same file name does not. A module without parameters or
    buffers hashes to the digest of nothing, a constant.
    """
    import torch

    h = hashlib.sha256()
    state = module.state_dict()
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


@dataclass
class CacheStats:
    """What one get_or_build call did."""

    forward_clips: int  # clips passed through the encoder by this call (0 on a hit)
    hit: bool  # the entry existed, or another process built it while this one waited
    build_seconds: float  # time this call spent building (0.0 on a hit)
    derived_from: str | None = None  # key of the entry the features were copied from, if any


class CachedFeatures:
    """Read-only view of one cache entry; `get(i)` reads one clip from disk into a new array.

    Nothing but the index is held in memory. Open file descriptors are not pickled, so an
    instance can be sent to spawned DataLoader workers, which reopen the shards on first use.
    """

    def __init__(self, path: Path, meta: dict, clip_ids: list[str], shard: np.ndarray,
                 offset: np.ndarray, lengths: np.ndarray, stats: CacheStats | None = None):
        self.path = Path(path)
        self.meta = meta
        self.key: str = meta["key"]
        self.dim: int = int(meta["dim"])
        self.frame_rate: float = float(meta["frame_rate"])
        self.clip_ids = clip_ids
        self.lengths = lengths
        self.stats = stats or CacheStats(forward_clips=0, hit=True, build_seconds=0.0)
        self._shard = shard
        self._offset = offset
        self._positions = {c: i for i, c in enumerate(clip_ids)}
        self._fds: dict[int, int] = {}
        self._fd_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, stats: CacheStats | None = None) -> "CachedFeatures":
        """Open an entry folder, checking that its files match its meta.json."""
        path = Path(path)

        def corrupt(detail: str) -> CorruptCacheError:
            return CorruptCacheError(f"{path}: feature cache entry is damaged: {detail}. Delete the "
                                     f"folder (rm -r '{path}') and run again to rebuild it.")

        try:
            meta = json.loads((path / META_NAME).read_text())
        except FileNotFoundError:
            raise corrupt(f"{META_NAME} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise corrupt(f"{META_NAME} is not valid JSON ({exc})") from None
        if meta.get("key") != path.name:
            raise corrupt(f"{META_NAME} describes entry {meta.get('key')!r}, not {path.name!r} "
                          "(a renamed or copied-over folder)")
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            raise corrupt(f"it was written in cache format {meta.get('format_version')!r}, this "
                          f"avbench reads format {CACHE_FORMAT_VERSION}")
        try:
            with np.load(path / INDEX_NAME, allow_pickle=False) as z:
                clip_ids = [str(c) for c in z["clip_ids"]]
                shard = z["shard"].astype(np.int64)
                offset = z["offset"].astype(np.int64)
                lengths = z["frames"].astype(np.int64)
        except FileNotFoundError:
            raise corrupt(f"{INDEX_NAME} is missing") from None
        except Exception as exc:  # zipfile/ValueError/KeyError for a damaged npz
            raise corrupt(f"{INDEX_NAME} cannot be read ({type(exc).__name__}: {exc})") from None
        n, dim, shard_bytes = int(meta["num_clips"]), int(meta["dim"]), list(meta["shard_bytes"])
        if not (len(clip_ids) == len(shard) == len(offset) == len(lengths) == n):
            raise corrupt(f"{INDEX_NAME} lists {len(clip_ids)} clips, {META_NAME} says {n}")
        if int(lengths.sum()) != int(meta["total_frames"]):
            raise corrupt(f"{INDEX_NAME} sums to {int(lengths.sum())} frames, {META_NAME} says "
                          f"{meta['total_frames']}")
        if n and (shard.min() < 0 or shard.max() >= len(shard_bytes)):
            raise corrupt(f"{INDEX_NAME} names shards that {META_NAME} does not list")
        ends = np.zeros(len(shard_bytes), dtype=np.int64)
        if n:
            np.maximum.at(ends, shard, (offset + lengths) * dim * 2)
        for i, expected in enumerate(shard_bytes):
            f = path / shard_name(i)
            try:
                size = f.stat().st_size
            except FileNotFoundError:
                raise corrupt(f"{f.name} is missing") from None
            if size != expected:
                raise corrupt(f"{f.name} is {size} bytes, {META_NAME} says {expected}")
            if ends[i] > expected:
                raise corrupt(f"{INDEX_NAME} reads up to byte {ends[i]} of {f.name}, which holds "
                              f"{expected}")
        return cls(path, meta, clip_ids, shard, offset, lengths, stats)

    def __len__(self) -> int:
        return len(self.clip_ids)

    def index_of(self, clip_id: str) -> int:
        try:
            return self._positions[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in feature cache {self.path} (built from "
                           f"manifest {self.meta.get('manifest_path')})") from None

    def get(self, i: int) -> np.ndarray:
        """Features of clip i (manifest order) as a new, writable float16 array [frames, dim]."""
        n = len(self.clip_ids)
        if not -n <= i < n:
            raise IndexError(f"clip index {i} out of range for feature cache {self.path} "
                             f"({n} clips)")
        i = int(i) % n
        frames, shard = int(self.lengths[i]), int(self._shard[i])
        out = np.empty((frames, self.dim), dtype=np.float16)
        nbytes, pos = out.nbytes, int(self._offset[i]) * self.dim * 2
        if nbytes == 0:
            return out
        fd, view, done = self._fd(shard), memoryview(out).cast("B"), 0
        while done < nbytes:
            got = os.preadv(fd, [view[done:]], pos + done)
            if got == 0:
                raise CorruptCacheError(
                    f"{self.path}: {shard_name(shard)} ended at byte {pos + done} while reading "
                    f"clip {self.clip_ids[i]!r}; the file was truncated after the entry was "
                    f"opened. Delete the folder (rm -r '{self.path}') and run again to rebuild it.")
            done += got
        return out

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._fd_lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = os.open(self.path / shard_name(shard), os.O_RDONLY | os.O_CLOEXEC)
                    self._fds[shard] = fd
        return fd

    def close(self) -> None:
        """Close the shard files (get() reopens them if called again)."""
        with self._fd_lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "CachedFeatures":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fds", None):
            self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"], state["_fd_lock"] = {}, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._fd_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"CachedFeatures({self.path}, clips={len(self)}, dim={self.dim}, "
                f"frame_rate={self.frame_rate:g}, hit={self.stats.hit})")


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

    def key(self, encoder: "Encoder", manifest: "Manifest", preprocessing: dict | None = None) -> str:
        """The entry key: equal inputs give equal keys across processes and machines."""
        return self._key_inputs(encoder, manifest, preprocessing)[0]

    def _key_inputs(self, encoder: "Encoder", manifest: "Manifest",
                    preprocessing: dict | None) -> tuple[str, dict]:
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
                     num_workers: int | None = None) -> CachedFeatures:
        """Open the entry for (encoder, manifest, preprocessing), building it first if needed.

        The encoder is moved to `device` (nn.Module.to works in place) and run in eval mode; its
        train/eval mode is restored afterwards. `num_workers` audio-loading processes (None: 0
        below 512 clips, else one per core but one, at most 4) feed the encoder.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        key, inputs = self._key_inputs(encoder, manifest, preprocessing)
        final = self.entry_path(key)
        if final.is_dir():  # entries appear by an atomic rename: a folder here is complete
            return CachedFeatures.open(final)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked(key):
            if final.is_dir():  # another process built it while this one waited
                return CachedFeatures.open(final)
            self._remove_stale_partials(key)
            started = time.monotonic()
            partial = self.root / f".{key}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            partial.mkdir()
            try:
                donor = self._find_donor(manifest, inputs)
                if donor is not None:
                    meta = self._copy_from(donor, manifest, inputs, key, partial, started=started)
                else:
                    meta = self._build(encoder, manifest, inputs, key, partial, batch_size=batch_size,
                                       device=device, progress=progress, num_workers=num_workers,
                                       started=started)
                _fsync_dir(partial)
                os.rename(partial, final)
                _fsync_dir(self.root)
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

    def _locked(self, key: str) -> "_KeyLock":
        return _KeyLock(self.root / f"{key}.lock", key)

    def _remove_stale_partials(self, own_key: str) -> None:
        """Remove partial folders no live builder owns.

        A builder holds its key's lock for as long as its partial folder exists, so a partial
        whose lock is free (or is this process's own key, whose lock it holds) is left over from
        a killed build.
        """
        for p in self.root.glob(".*.partial-*"):
            key = p.name[1:].split(".partial-", 1)[0]
            if key == own_key:
                shutil.rmtree(p, ignore_errors=True)
                continue
            lock = self.root / f"{key}.lock"
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                shutil.rmtree(p, ignore_errors=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # being built right now
            else:
                shutil.rmtree(p, ignore_errors=True)
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _build(self, encoder: "Encoder", manifest: "Manifest", inputs: dict, key: str, folder: Path,
               *, batch_size: int, device: str, progress: bool, num_workers: int | None,
               started: float) -> dict:
        import torch
        from torch.utils.data import DataLoader
        from tqdm import tqdm

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
                            prefetch_factor=4 if num_workers else None)
        writer = _ShardWriter(folder)
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
        return self._finish_entry(folder, key, inputs, manifest, clip_ids, writer, index, started, {
            "encoder": name,
            "encoder_class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
            "dim": dim,
            "frame_rate": float(encoder.frame_rate),
            "batch_size": batch_size,
            "device": str(device),
        })

    @staticmethod
    def _finish_entry(folder: Path, key: str, inputs: dict, manifest: "Manifest", clip_ids: list[str],
                      writer: "_ShardWriter", index: dict[str, np.ndarray], started: float,
                      described: dict) -> dict:
        """Write index.npz and meta.json (fsynced) for shards `writer` has closed; return meta."""
        np.savez(folder / INDEX_NAME, clip_ids=np.array(clip_ids, dtype=str), **index)
        _fsync_file(folder / INDEX_NAME)
        meta = {
            "key": key,
            **inputs,
            **described,
            "manifest_path": str(manifest.path),
            "dtype": "float16",
            "layout": "row-major [frames, dim] per clip, clips concatenated in manifest order",
            "num_clips": len(clip_ids),
            "total_frames": int(index["frames"].sum()),
            "bytes": int(sum(writer.shard_bytes)),
            "shard_bytes": writer.shard_bytes,
            "build_seconds": round(time.monotonic() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (folder / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _fsync_file(folder / META_NAME)
        return meta

    # ----- reuse across manifests ----------------------------------------------------------------

    def _find_donor(self, manifest: "Manifest", inputs: dict) -> "CachedFeatures | None":
        """A complete entry with the same encoder, weights and preprocessing that holds every clip
        of `manifest`, computed from the same audio (see the module docstring), or None."""
        if not self.root.is_dir():
            return None
        same = _canonical({k: v for k, v in inputs.items() if k != "manifest_id"})
        wanted: dict[str, tuple[str, int, int]] | None = None  # built for the first candidate only
        for meta_path in sorted(self.root.glob(f"*/{META_NAME}")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if (meta.get("key") != meta_path.parent.name or meta.get("manifest_id") == inputs["manifest_id"]
                    or _canonical({k: meta.get(k) for k in inputs if k != "manifest_id"}) != same
                    or int(meta.get("num_clips", 0)) < len(manifest.table)):
                continue
            if wanted is None:
                wanted = _clip_sources(manifest)
            built_at = meta_path.stat().st_mtime - float(meta.get("build_seconds", 0.0))
            if self._covers(meta, wanted, built_at):
                try:
                    return CachedFeatures.open(meta_path.parent)
                except CorruptCacheError as exc:
                    log.warning("not reusing feature cache entry: %s", exc)
        return None

    @staticmethod
    def _covers(meta: dict, wanted: dict[str, tuple[str, int, int]], built_at: float) -> bool:
        from bench.data.manifest import ManifestError, read_manifest
        from bench.files import file_sha256

        donor_path = Path(str(meta.get("manifest_path", "")))
        try:
            if file_sha256(donor_path)[:16] != meta["manifest_id"]:
                return False  # rewritten since: its rows no longer say which audio was encoded
            held = _clip_sources(read_manifest(donor_path))
        except (OSError, ManifestError):
            return False
        if any(held.get(clip_id) != source for clip_id, source in wanted.items()):
            return False
        try:
            return all(os.stat(path).st_mtime <= built_at for path, _, _ in wanted.values())
        except OSError:
            return False

    def _copy_from(self, donor: "CachedFeatures", manifest: "Manifest", inputs: dict, key: str,
                   folder: Path, *, started: float) -> dict:
        clip_ids = manifest.table["clip_id"].astype(str).tolist()
        writer = _ShardWriter(folder)
        try:
            for clip_id in clip_ids:
                writer.append(donor.get(donor.index_of(clip_id)))
            index = writer.close()
        finally:
            writer.abort()
            donor.close()
        described = {k: donor.meta[k] for k in ("encoder", "encoder_class", "dim", "frame_rate",
                                                "batch_size", "device")}
        described["derived_from"] = donor.key
        log.info("feature cache: %d clips of %s copied from entry %s instead of running the encoder",
                 len(clip_ids), described["encoder"], donor.key)
        return self._finish_entry(folder, key, inputs, manifest, clip_ids, writer, index, started,
                                  described)

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
        feats = feats.detach()
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


class _KeyLock:
    """Exclusive flock on `<root>/<key>.lock` for as long as the key is being built.

    flock (not fcntl/lockf record locks) because it belongs to the open file description: it is
    released when the builder exits however it exits, including SIGKILL, and two descriptors in
    one process exclude each other like two processes do.
    """

    def __init__(self, path: Path, key: str):
        self.path, self.key, self.fd = path, key, -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building feature cache %s (lock %s)", self.key, self.path)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


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


class _ShardWriter:
    """Appends clips to shard files with plain buffered writes, rolling over at SHARD_BYTES."""

    def __init__(self, folder: Path, shard_limit: int | None = None):
        self.folder = folder
        self.limit = SHARD_BYTES if shard_limit is None else shard_limit
        self.shard_bytes: list[int] = []
        self.fh = None
        self.shard: list[int] = []
        self.offset: list[int] = []
        self.frames: list[int] = []
        self._frame_pos = 0

    def append(self, f: np.ndarray) -> None:
        f = np.ascontiguousarray(f, dtype=np.float16)
        if self.fh is None or (self.shard_bytes[-1] and self.shard_bytes[-1] + f.nbytes > self.limit):
            self._roll()
        self.fh.write(memoryview(f).cast("B"))
        self.shard.append(len(self.shard_bytes) - 1)
        self.offset.append(self._frame_pos)
        self.frames.append(f.shape[0])
        self._frame_pos += f.shape[0]
        self.shard_bytes[-1] += f.nbytes

    def _roll(self) -> None:
        self._finish_shard()
        self.fh = open(self.folder / shard_name(len(self.shard_bytes)), "wb", buffering=4 << 20)
        self.shard_bytes.append(0)
        self._frame_pos = 0

    def _finish_shard(self) -> None:
        if self.fh is not None:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            self.fh = None

    def close(self) -> dict[str, np.ndarray]:
        self._finish_shard()
        return {"shard": np.asarray(self.shard, dtype=np.int32),
                "offset": np.asarray(self.offset, dtype=np.int64),
                "frames": np.asarray(self.frames, dtype=np.int64)}

    def abort(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _clip_sources(manifest: "Manifest") -> dict[str, tuple[str, int, int]]:
    """clip id -> (resolved audio path, num_samples, sample_rate): the audio each clip's features
    are computed from, as far as the manifest says."""
    t = manifest.table
    return dict(zip(t["clip_id"].astype(str),
                    zip((str(manifest.resolve(p)) for p in t["audio_path"].astype(str)),
                        t["num_samples"].astype(np.int64).tolist(), t["sample_rate"].astype(np.int64).tolist())))


def _canonical(value: Any) -> str:
    """JSON text that compares equal for equal values (tuples and lists, key order)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make a rename or new files in `path` durable (a no-op where directories cannot be fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
