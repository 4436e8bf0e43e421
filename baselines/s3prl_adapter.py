"""`s3prl:<upstream>`: any s3prl upstream, built from a LOCAL checkpoint, as an avbench encoder.

Why an adapter: s3prl (SUPERB's toolkit) wraps dozens of SSL models behind one interface, and
running its own code next to avbench's re-implementations (baselines.apc, baselines.wav2vec)
is how we check them (tests/parity) and how a user evaluates a model avbench does not implement.

Why it is optional: s3prl 0.4.18 needs a torchaudio <= 2.8 (later ones dropped the audio-backend
API it calls), torchaudio 2.8 needs exactly torch 2.8, and avbench's core pins the CPU wheel of
torch 2.13 (torchaudio has no build for it). The two cannot share one environment, so s3prl lives
in its own virtualenv with torch 2.8 (a CUDA build from PyPI, ~4 GB to download, ~7 GB on disk);
`tox -e s3prl` builds exactly that (see tox.ini), or by hand:

    python3.11 -m venv .venv-s3prl
    .venv-s3prl/bin/pip install torch==2.8.0 torchaudio==2.8.0 s3prl==0.4.18
    .venv-s3prl/bin/pip install --no-deps -e .      # avbench itself, keeping torch 2.8
    .venv-s3prl/bin/pip install numpy scipy librosa soundfile pandas matplotlib tqdm PyYAML \
        "espeakng-loader>=0.2.4,<0.3" av           # avbench's other dependencies

(There is no `pip install .[s3prl]` extra: it could never resolve beside the core's torch pin.)
Without s3prl, building an `s3prl:*` encoder raises a ConfigError that says all this; importing
this module and `avbench list` work either way.

Construction. `create_encoder("s3prl:apc", checkpoint=CKPT)` calls `s3prl_encoder("apc")` and
then `encoder.load_checkpoint(CKPT)`; the architecture of an s3prl upstream comes from its
checkpoint, so the first load BUILDS the upstream (s3prl's own hub entry `<variant>_local(ckpt)`,
or `<variant>_custom` for upstreams that only have that; never the download entries). Equivalent:
`create_encoder("s3prl:apc@CKPT")` or `create_encoder("s3prl:apc", ckpt=CKPT)` (builds in the
factory). Until built, `dim` is 0 and forward/output_lengths raise a ConfigError: every path
through create_encoder with a checkpoint returns a built encoder, with dim, frame_rate and the
layer count measured on a 1 s dummy clip (seeded noise; the global RNG is left untouched).
`load_checkpoint` on a built encoder: the same file is a no-op; avbench's own format
(`{"encoder": state_dict, ...}`, e.g. a finetuned copy saved by avbench) or a bare state dict
loads weights into the built upstream (so `ckpt=ORIGINAL` + `checkpoint=FINETUNED` works); any
other file rebuilds the upstream from it. Checkpoints are read with torch.load(weights_only=True)
allowing argparse.Namespace only, BEFORE s3prl sees them (some s3prl upstreams unpickle with
weights_only=False): a file holding other Python objects is refused with a ConfigError.

Features: s3prl's `hidden_states[layer]` (default -1, the last; s3prl's indexing), [B, T', D].
Lengths follow s3prl's `S3PRLUpstream` convention: with downsample rate r (the upstream's
`get_downsample_rates("hidden_states")`), a clip of n samples has ceil(n / r) valid frames; an
upstream that returns fewer (e.g. APC's Kaldi fbank with snip_edges gives 98 for 1 s, not 100) is
padded by repeating its last frame, as S3PRLUpstream does, and extra frames are cut.
frame_rate = 16000 / r. Clips shorter than 50 ms are zero-padded to 50 ms first (S3PRLUpstream's
MIN_SECOND; APC cannot frame less than 25 ms).

Padding: by default each clip runs through the upstream alone (batch_clips=False), so padding
cannot leak whatever the upstream does (wav2vec's group norm, for one, normalises over time, so
s3prl's own padded batches change the features of shorter clips). batch_clips=True hands the
whole batch to s3prl (faster; exact only for upstreams that pack or mask, like APC). Frames past
the output lengths are zero either way.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.checkpoints import load_published_checkpoint
from bench.errors import ConfigError
from bench.registry import Encoder, load_state_exactly, register_encoder

log = logging.getLogger("avbench.s3prl")

# Bump when a change to this module changes the features: cached ones go stale.
FEATURE_VERSION = 1
SAMPLE_RATE = 16_000
# S3PRLUpstream's MIN_SECOND: shorter clips are zero-padded to this many samples first.
MIN_SAMPLES = 800
DUMMY_SECONDS = 1.0
# The combination tested in tests/parity (tox -e s3prl).
S3PRL_VERSION = "0.4.18"
TORCH_VERSION = "2.8.0"

INSTALL_HELP = (
    "s3prl is an optional dependency, kept out of avbench's core install because it cannot live "
    f"beside the core's torch: s3prl {S3PRL_VERSION} needs torchaudio <= 2.8, torchaudio 2.8 needs exactly "
    "torch 2.8, and the core pins torch==2.13.0 (CPU), for which no torchaudio exists. Install it in a "
    "SEPARATE virtualenv with torch 2.8 (a CUDA build from PyPI: ~4 GB download, ~7 GB on disk): "
    "`tox -e s3prl` builds one and runs tests/parity, or by hand: `python3.11 -m venv .venv-s3prl && "
    f".venv-s3prl/bin/pip install torch=={TORCH_VERSION} torchaudio=={TORCH_VERSION} s3prl=={S3PRL_VERSION} && "
    ".venv-s3prl/bin/pip install --no-deps -e . && .venv-s3prl/bin/pip install numpy scipy librosa soundfile "
    "pandas matplotlib tqdm PyYAML 'espeakng-loader>=0.2.4,<0.3' av`. (There is no `pip install .[s3prl]` "
    "extra: it could never resolve beside the core's torch pin.) Then run avbench from that environment."
)

_VARIANT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def require_s3prl() -> Any:
    """Import s3prl or raise a ConfigError explaining the optional install."""
    try:
        import s3prl
    except ImportError as exc:
        raise ConfigError(f"the s3prl:<upstream> encoders need the s3prl package, which is not importable here "
                          f"({exc}). {INSTALL_HELP}") from exc
    return s3prl


def hub_entry(variant: str) -> Callable[..., nn.Module]:
    """s3prl's local-checkpoint hub entry for `variant`: `<variant>_local`, else `<variant>_custom`.

    Looks in `s3prl.upstream.<variant>.hubconf` first (well under a second), then in `s3prl.hub`,
    which imports every upstream (transformers included: 10-30 s on a 2-core machine) and is only
    needed for entries defined outside their own package (e.g. mos_apc) or for the error message.
    The entries without a suffix download published checkpoints and are never used.
    """
    require_s3prl()
    if not _VARIANT.fullmatch(variant):
        raise ConfigError(f"s3prl:{variant}: an s3prl upstream name is letters, digits and '_' (e.g. s3prl:apc)")
    base = re.sub(r"_(local|custom)$", "", variant)
    names = [variant] if base != variant else [f"{base}_local", f"{base}_custom"]
    try:
        module = importlib.import_module(f"s3prl.upstream.{base}.hubconf")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith(f"s3prl.upstream.{base}"):
            raise ConfigError(f"s3prl:{variant}: s3prl's {base} upstream needs the package {exc.name!r}, which is "
                              f"not installed ({exc}).") from exc
        module = None
    except ImportError as exc:  # e.g. a torchaudio that does not fit the torch beside it
        raise ConfigError(f"s3prl:{variant}: importing s3prl's {base} upstream failed ({exc}). {INSTALL_HELP}") from exc
    for name in names:
        if module is not None and callable(getattr(module, name, None)):
            return getattr(module, name)
    try:
        hub = importlib.import_module("s3prl.hub")
    except ImportError as exc:
        raise ConfigError(f"s3prl:{variant}: importing s3prl.hub failed ({exc}). {INSTALL_HELP}") from exc
    for name in names:
        if callable(getattr(hub, name, None)):
            return getattr(hub, name)
    local = sorted({re.sub(r"_(local|custom)$", "", n) for n in hub.options()
                    if n.endswith(("_local", "_custom"))})
    raise ConfigError(f"s3prl:{variant}: s3prl {getattr(require_s3prl(), '__version__', '?')} has no hub entry "
                      f"{' or '.join(names)} that builds the upstream from a local checkpoint. Upstreams that do: "
                      f"{', '.join(local)}.")


def read_checkpoint_safely(path: Path) -> Any:
    """torch.load(weights_only=True) allowing argparse.Namespace; None for a file that is not a pickle.

    Non-pickle files (an upstream's YAML config, say) carry no code and are left to s3prl.
    """
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        return None
    # Only Namespace (s3prl's pretrain runner stores its Args as one): not the numpy data that
    # fairseq's bookkeeping needs, because s3prl's own files never hold any.
    return load_published_checkpoint(path, "an s3prl checkpoint", allowed=(argparse.Namespace,),
                                     mmap=head.startswith(_ZIP_MAGIC))


def _is_avbench_weights(obj: Any) -> bool:
    """avbench's checkpoint format ({"encoder": state_dict, ...}) or a bare state dict of this adapter."""
    if not isinstance(obj, dict):
        return False
    if isinstance(obj.get("encoder"), dict) and (str(obj.get("format", "")).startswith("avbench") or
                                                  all(k.startswith("upstream.") for k in obj["encoder"])):
        return True
    return bool(obj) and all(isinstance(k, str) and k.startswith("upstream.") and isinstance(v, torch.Tensor)
                             for k, v in obj.items())


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def match_length(h: torch.Tensor, frames: int) -> torch.Tensor:
    """Cut [b, n, D] to `frames`, or pad it by repeating the last frame (S3PRLUpstream's rule)."""
    n = h.shape[1]
    if n >= frames:
        return h[:, :frames]
    if n == 0:
        return h.new_zeros(h.shape[0], frames, h.shape[2])
    return torch.cat([h, h[:, -1:].expand(-1, frames - n, -1)], dim=1)


class S3PRLEncoder(Encoder):
    """One s3prl upstream's hidden states as an avbench encoder (see the module docstring)."""

    sample_rate = SAMPLE_RATE
    # Not pretrainable by avbench (no pretext); it needs a checkpoint to exist at all, enforced here.
    needs_pretraining = True  # meaningless without a checkpoint: it wraps a pretrained upstream
    trainable = True

    def __init__(self, variant: str, layer: int = -1, batch_clips: bool = False) -> None:
        super().__init__()
        self.variant = variant
        self.name = f"s3prl:{variant}"
        self.entry = hub_entry(variant)
        self.layer = int(layer)
        self.batch_clips = bool(batch_clips)
        self.dim = 0
        self.frame_rate = 0.0
        self.downsample_rate = 0
        self.num_layers = 0
        self.hidden_sizes: list[int] = []
        self.checkpoint: Path | None = None
        self.checkpoint_sha256: str | None = None
        self.upstream: nn.Module | None = None
        # Follows .to(device), so an upstream built later lands where the encoder was moved.
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    # ------------------------------------------------------------------------------ building
    @property
    def built(self) -> bool:
        return self.upstream is not None

    def build(self, path: str | Path, preloaded: Any = None) -> None:
        """Build the upstream from the local checkpoint `path` with s3prl's hub entry."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: checkpoint not found for encoder {self.name!r}.")
        if preloaded is None:
            preloaded = read_checkpoint_safely(path)  # refuses unsafe pickles before s3prl reads the file
        del preloaded
        # fork_rng: s3prl's constructors may draw random numbers (initialisation before loading),
        # which must not shift the caller's seeded stream.
        with torch.random.fork_rng(devices=[]), torch.serialization.safe_globals([argparse.Namespace]):
            try:
                upstream = self.entry(ckpt=str(path))
            except ConfigError:
                raise
            except Exception as exc:  # s3prl reports bad checkpoints with asserts, KeyErrors, ValueErrors...
                raise ConfigError(f"{path}: s3prl's {self.entry.__name__} could not build the {self.variant!r} "
                                  f"upstream from it ({type(exc).__name__}: {exc}). Is it a checkpoint of that "
                                  "upstream, in the format s3prl expects (e.g. s3prl's converted format for "
                                  "wav2vec/hubert)?") from exc
        upstream.to(self._device_probe.device)
        self._probe(upstream, path)
        self.upstream = upstream
        self.upstream.train(self.training)
        self.checkpoint = path.resolve()
        self.checkpoint_sha256 = _file_sha256(path)

    def _probe(self, upstream: nn.Module, path: Path) -> None:
        """Layer count, dims and downsample rate from a 1 s dummy clip, as S3PRLUpstream does."""
        generator = torch.Generator().manual_seed(0)
        wav = torch.randn(int(DUMMY_SECONDS * SAMPLE_RATE), generator=generator).to(self._device_probe.device)
        was_training = upstream.training
        upstream.eval()
        try:
            with torch.no_grad():
                result = upstream([wav])
        except Exception as exc:
            raise ConfigError(f"{path}: the s3prl {self.variant!r} upstream failed on a 1 s dummy clip "
                              f"({type(exc).__name__}: {exc}).") from exc
        finally:
            upstream.train(was_training)
        hidden = result.get("hidden_states") if isinstance(result, dict) else None
        if not isinstance(hidden, (list, tuple)) or not hidden:
            raise ConfigError(f"s3prl:{self.variant}: the upstream returned no 'hidden_states' list; the adapter "
                              "needs s3prl's standard upstream interface.")
        num_layers = len(hidden)
        if not -num_layers <= self.layer < num_layers:
            raise ConfigError(f"s3prl:{self.variant}: layer must be in {-num_layers}..{num_layers - 1} (s3prl's "
                              f"hidden_states index, -1 = last) for this checkpoint's {num_layers} hidden states, "
                              f"got {self.layer}")
        rate: Any = None
        if hasattr(upstream, "get_downsample_rates"):
            rate = upstream.get_downsample_rates("hidden_states")
            if isinstance(rate, (list, tuple)):
                rate = rate[self.layer]
        if not rate:  # no static rate: infer it from the dummy clip, as s3prl's Featurizer does
            rate = round(wav.numel() / max(hidden[self.layer].shape[1], 1))
        self.num_layers = num_layers
        self.hidden_sizes = [int(h.shape[-1]) for h in hidden]
        self.dim = self.hidden_sizes[self.layer]
        self.downsample_rate = int(rate)
        self.frame_rate = SAMPLE_RATE / self.downsample_rate
        # s3prl does not report receptive fields; its conv front ends (no padding) centre frame 0
        # near half a hop (wav2vec 2.0/HuBERT: 12.5 ms for a 20 ms hop).
        self.first_frame_centre_s = self.downsample_rate / 2 / SAMPLE_RATE

    def load_checkpoint(self, path: str | Path) -> None:
        """Build from an s3prl checkpoint, or load avbench-format weights into the built upstream.

        See the module docstring: create_encoder builds the (unbuilt) encoder here.
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: checkpoint not found for encoder {self.name!r}.")
        if self.built and path.resolve() == self.checkpoint:
            return
        obj = read_checkpoint_safely(path)
        if _is_avbench_weights(obj):
            if not self.built:
                raise ConfigError(f"{path}: avbench-format weights of an {self.name!r} encoder, but the upstream is "
                                  "not built yet and its architecture comes from s3prl's checkpoint: give that as "
                                  f"ckpt= and this file as checkpoint=, e.g. create_encoder({self.name!r}, "
                                  f"ckpt=S3PRL_CKPT, checkpoint={str(path)!r}).")
            state = obj["encoder"] if "encoder" in obj else obj
            load_state_exactly(self, dict(state), source=path)
            return
        if self.built:
            log.info("%s: rebuilding the upstream from %s (was %s)", self.name, path, self.checkpoint)
        self.build(path, preloaded=obj)

    def _require_built(self) -> nn.Module:
        if self.upstream is None:
            raise ConfigError(f"encoder {self.name!r} has no checkpoint yet: s3prl upstreams are built from one. "
                              f"Use create_encoder('{self.name}@CKPT'), create_encoder({self.name!r}, checkpoint=CKPT) "
                              "or ckpt=CKPT.")
        return self.upstream

    # ------------------------------------------------------------------------------ features
    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """ceil(n / downsample_rate): S3PRLUpstream's valid frame count."""
        self._require_built()
        lengths = torch.as_tensor(lengths, dtype=torch.long)
        frames = torch.div(lengths - 1, self.downsample_rate, rounding_mode="floor") + 1
        return torch.where(lengths > 0, frames, torch.zeros_like(frames))

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        upstream = self._require_built()
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        batch, samples = wav.shape
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(0, samples)
        out_lengths = self.output_lengths(lengths)
        groups = [list(range(batch))] if self.batch_clips else [[i] for i in range(batch)]
        per_clip: list[torch.Tensor] = [wav.new_zeros(0, self.dim)] * batch
        for group in groups:
            if not group:
                continue
            clips = []
            for i in group:
                clip = wav[i, : int(lengths[i])]
                if clip.numel() < MIN_SAMPLES:
                    clip = F.pad(clip, (0, MIN_SAMPLES - clip.numel()))
                clips.append(clip)
            hidden = upstream(clips)["hidden_states"][self.layer]
            longest = max(c.numel() for c in clips)
            expected = math.ceil(longest / self.downsample_rate)
            if abs(hidden.shape[1] - expected) > 5 + expected // 2:  # S3PRLUpstream asserts the same scale
                raise ConfigError(f"{self.name}: the upstream gave {hidden.shape[1]} frames for {longest} samples, "
                                  f"far from the {expected} its downsample rate {self.downsample_rate} implies.")
            hidden = match_length(hidden, expected)
            for j, i in enumerate(group):
                per_clip[i] = hidden[j, : int(out_lengths[i])]
        frames = int(out_lengths.max()) if batch else 0
        feats = torch.stack([F.pad(h, (0, 0, 0, frames - h.shape[0])) for h in per_clip]) if batch else \
            wav.new_zeros(0, 0, self.dim)
        return feats, out_lengths

    def config(self) -> dict:
        s3prl = require_s3prl()
        layer = self.layer % self.num_layers if self.num_layers else self.layer
        return {**super().config(), "version": FEATURE_VERSION, "variant": self.variant,
                "hub_entry": getattr(self.entry, "__name__", str(self.entry)),
                "s3prl_version": str(getattr(s3prl, "__version__", "?")), "layer": layer,
                "num_layers": self.num_layers, "downsample_rate": self.downsample_rate,
                "batch_clips": self.batch_clips, "min_samples": MIN_SAMPLES,
                "frames": "ceil(n / rate), last frame repeated",
                # The checkpoint also holds what the weights do not (e.g. APC's fbank options).
                "checkpoint_sha256": self.checkpoint_sha256}


@register_encoder("s3prl", family=True)
def s3prl_encoder(variant: str, ckpt: str | None = None, layer: int = -1, batch_clips: bool = False) -> S3PRLEncoder:
    """Any s3prl upstream from a local checkpoint (optional: needs s3prl in a torch-2.8 venv, see tox -e s3prl).

    variant: s3prl's upstream name (apc, wav2vec, hubert, ...); ckpt: the local checkpoint (or pass
    it as create_encoder's checkpoint / NAME@CKPT); layer: s3prl's hidden_states index (-1 = last);
    batch_clips: run the batch through s3prl at once instead of clip by clip (see the module doc).
    """
    encoder = S3PRLEncoder(variant, layer=layer, batch_clips=batch_clips)
    if ckpt is not None:
        encoder.build(ckpt)
    return encoder
