"""One feature-cache entry on disk: its layout, reading it, writing it, and publishing it safely.

Layout of one entry, `<root>/<key>/` (bench.data.feature_cache chooses the root and the key):
  shard-00000.f16, ...  float16, row-major [frames, dim]: the features of every clip of the
                        manifest (all splits, manifest row order) concatenated along time. A clip
                        never spans two shards; a shard holds up to the builder's shard limit
                        (feature_cache.SHARD_BYTES, 512 MiB) unless one clip alone is larger. Raw
                        bytes, so `np.memmap` or `np.fromfile` can open them without this module.
  index.npz             per clip: clip_ids, shard, offset (in frames, within the shard), frames
  meta.json             the key inputs in readable form, dim, frame_rate, sizes, build time

Crash safety. An entry is written into a sibling `.<key>.partial-<pid>-<random>` folder and
renamed into place (one atomic os.rename) only once every file is complete and fsynced. A
killed build therefore leaves only a dot-folder that is never read, and that the next builder
removes (`remove_stale_partials`). An entry whose files do not match its meta.json (a truncated
copy, a full disk) is refused with an error that names the folder and says to delete it.

Builders of one key exclude each other with an exclusive `fcntl.flock` on `<root>/<key>.lock`
(`key_lock`, bench.files.exclusive_lock). Lock files are left in place: deleting one while another
process waits on it would let a third process lock a new file of the same name and build the key
twice.

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
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.files import exclusive_lock

log = logging.getLogger("avbench.cache")

# Bump when the layout or the way features are computed changes: old entries get new keys.
CACHE_FORMAT_VERSION = 1

META_NAME = "meta.json"
INDEX_NAME = "index.npz"


class CacheError(RuntimeError):
    """A cache entry that cannot be built or read. The message names the folder and the fix."""


class CorruptCacheError(CacheError):
    """An entry whose files do not match its meta.json."""


class FeatureError(CacheError):
    """An encoder produced features the cache refuses to store (NaN/Inf, beyond float16, bad shape)."""


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.f16"


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


class ShardWriter:
    """Appends clips to shard files with plain buffered writes, rolling over at SHARD_BYTES."""

    def __init__(self, folder: Path, shard_limit: int):
        self.folder = folder
        self.limit = shard_limit
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


def write_index_and_meta(folder: Path, key: str, inputs: dict, manifest_path: Path, clip_ids: list[str],
                         writer: "ShardWriter", index: dict[str, np.ndarray], started: float,
                         described: dict) -> dict:
    """Write index.npz and meta.json (fsynced) for shards `writer` has closed; return meta."""
    np.savez(folder / INDEX_NAME, clip_ids=np.array(clip_ids, dtype=str), **index)
    fsync_file(folder / INDEX_NAME)
    meta = {
        "key": key,
        **inputs,
        **described,
        "manifest_path": str(manifest_path),
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
    fsync_file(folder / META_NAME)
    return meta


def key_lock(path: Path, key: str):
    """Exclusive flock on `<root>/<key>.lock` for as long as the key is being built."""
    return exclusive_lock(path, log, "waiting for another process building feature cache %s (lock %s)", key, path)


def remove_stale_partials(root: Path, own_key: str) -> None:
    """Remove partial folders no live builder owns.

    A builder holds its key's lock for as long as its partial folder exists, so a partial
    whose lock is free (or is this process's own key, whose lock it holds) is left over from
    a killed build.
    """
    for p in root.glob(".*.partial-*"):
        key = p.name[1:].split(".partial-", 1)[0]
        if key == own_key:
            shutil.rmtree(p, ignore_errors=True)
            continue
        lock = root / f"{key}.lock"
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



def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
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
