"""PASE+ (Ravanelli et al. 2020, "Multi-task self-supervised learning for robust speech recognition").

The encoder is the reference `WaveFe` front end of santi-pdp/pase built from `cfg/frontend/PASE+.cfg`,
re-implemented here with the reference's own parameter names, so the published `FE_e199.ckpt`
(a `torch.save(frontend.state_dict())`) loads into it key for key. Facts, read from the public code
(pase/models/frontend.py `WaveFe`, pase/models/modules.py `FeBlock`, `SincConv_fast`,
`build_rnn_block`; salesforce/pytorch-qrnn torchqrnn/qrnn.py and forget_mult.py; cfg/frontend/
PASE+_gru.cfg, whose only difference from PASE+.cfg is the recurrent layer):

- blocks.0: SincNet, 64 band-pass filters of 251 taps. Learnable `low_hz_` and `band_hz_` [64, 1],
  mel-spaced from 30 Hz to 8000 - 100 Hz at init; filters use |low| + 50 Hz and a band of at least
  50 Hz, a half Hamming window (the reference's slightly stretched 125-point one) and unit gain at
  the centre. Input reflect-padded by 125 on both sides (stride 1).
- blocks.1..7: Conv1d with kernels 20, 11, 11, 11, 11, 11, 11, strides 10, 2, 1, 2, 1, 2, 2 and
  64, 128, 128, 256, 256, 512, 512 channels, each input reflect-padded by (k//2 - 1, k//2) when the
  stride is > 1 or the kernel even, else (k//2, k//2). Every block: conv -> BatchNorm1d -> PReLU
  (one slope per channel, initialised at 0). Total stride 160, so 100 frames per second.
- rnn: a QRNN (torchqrnn `QRNN(512, 512, 1, window=2)`: `build_rnn_block` doubles rnn_dim // 2
  and ignores `bidirectional`), i.e. one unidirectional fo-pooling layer whose gates come from one
  Linear over [x_t, x_{t-1}] (`rnn.layers.0.linear`, [3 * 512, 2 * 512]): z = tanh, f = sigmoid,
  o = sigmoid, c_t = f_t z_t + (1 - f_t) c_{t-1} from c_{-1} = 0, h_t = o_t c_t. No QRNN package is
  installable here, so this module carries its own pure-torch QRNN with the same parameter layout
  (a loop over frames; CUDA-kernel-free but numerically the same recurrence). The config's
  rnn_type "gru"/"lstm" (PASE+_gru.cfg) is also supported: a bidirectional torch RNN of
  rnn_dim // 2 units per direction, as `build_rnn_block` builds it.
- W: Conv1d(rnn_dim = 512, emb_dim = 256, 1).
- denseskips.0..6: bias-free Conv1d(channels of block i, 256, 1) on the output of every block but
  the last. `WaveFe.fuse_skip` brings each one to the output rate by averaging non-overlapping
  groups of d = len(skip) // len(output) frames (after cropping to len(output) * d) and adds it
  to W's output, in block order.
- norm_out: BatchNorm1d(256, affine=False) on the sum.
With these sizes the encoder has 7,832,896 parameters (7.83 M).

Padding never leaks into valid frames: the reflect padding of every layer is done per clip at its
own valid end (a gather, identical to F.pad(mode="reflect") on the clip alone); BatchNorm in
training mode takes its statistics over valid frames only; the dense skips average each clip with
its own d; the QRNN is causal (the GRU/LSTM variants run packed sequences); and frames beyond each
clip's output length are zero. The one departure from the reference arithmetic is that the dense
skips are averaged before their 1x1 projection rather than after, which is the same linear map
(they commute) at ~1/d of the cost.

Layout: the layers live in baselines.pase_layers and the architecture settings (PASE+.cfg, reading
reference JSON configs) in baselines.pase_arch; this module wires them into the registered encoder
and loads its checkpoints. The pretext is in baselines.pase_workers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from baselines.pase_arch import read_reference_config, resolve_arch
from baselines.pase_layers import FeBlock, PackedGRU, PackedLSTM, QRNN, length_mask, masked_batch_norm
from bench.checkpoints import load_published_checkpoint
from bench.errors import ConfigError
from bench.registry import Encoder, load_state_exactly, register_encoder

log = logging.getLogger("avbench.pase")

# Bump when a change here, in baselines.pase_layers or in baselines.pase_arch changes the
# features: cached ones go stale.
FEATURE_VERSION = 1
CONFIG_NAMES = ("PASE+.cfg", "pase+.cfg", "PASE+.json", "pase+.json")


@register_encoder("pase+")
class PASEPlus(Encoder):
    """PASE+ front end: 16 kHz waveform -> 256-d features at 100 Hz (see the module docstring).

    Architecture keywords use the reference JSON names and default to PASE+.cfg; `config_path`
    reads them from a reference JSON config instead (explicit keywords override the file).
    """

    name = "pase+"
    frame_rate = 100.0
    dim = 256
    needs_pretraining = True
    trainable = True

    def __init__(self, config_path: str | Path | None = None, kwidths: list[int] | None = None,
                 strides: list[int] | None = None, fmaps: list[int] | None = None, emb_dim: int | None = None,
                 rnn_dim: int | None = None, rnn_type: str | None = None, rnn_layers: int | None = None,
                 rnn_dropout: float | None = None, rnn_pool: bool | None = None, denseskips: bool | None = None,
                 norm_out: bool | None = None, tanh_out: bool | None = None, sincnet: bool | None = None) -> None:
        super().__init__()
        self.config_path = Path(config_path) if config_path is not None else None
        self._build(resolve_arch(self.config_path, kwidths=kwidths, strides=strides, fmaps=fmaps, emb_dim=emb_dim,
                                 rnn_dim=rnn_dim, rnn_type=rnn_type, rnn_layers=rnn_layers,
                                 rnn_dropout=rnn_dropout, rnn_pool=rnn_pool, denseskips=denseskips,
                                 norm_out=norm_out, tanh_out=tanh_out, sincnet=sincnet))

    # ---------------------------------------------------------------- construction
    def _build(self, arch: dict) -> None:
        """(Re)create every submodule for `arch`, on the device the encoder is on."""
        device = next(self.parameters()).device if any(True for _ in self.parameters()) else None
        for child in list(self._modules):
            del self._modules[child]
        self.arch = arch
        self.dim = arch["emb_dim"]
        hop = int(np.prod(arch["strides"]))
        self.hop = hop
        self.frame_rate = self.sample_rate / hop
        self.blocks = nn.ModuleList()
        skips = []
        ninp = 1
        n_blocks = len(arch["fmaps"])
        for i, (k, s, fmap) in enumerate(zip(arch["kwidths"], arch["strides"], arch["fmaps"])):
            self.blocks.append(FeBlock(ninp, fmap, k, s, sincnet=arch["sincnet"] and i == 0))
            if arch["denseskips"] and i < n_blocks - 1:
                skips.append(nn.Conv1d(fmap, arch["emb_dim"], 1, bias=False))
            ninp = fmap
        if arch["denseskips"]:
            self.denseskips = nn.ModuleList(skips)
        if arch["rnn_pool"]:
            if arch["rnn_type"] == "qrnn":
                self.rnn = QRNN(ninp, arch["rnn_dim"], arch["rnn_layers"], arch["rnn_dropout"])
            else:
                cls = PackedGRU if arch["rnn_type"] == "gru" else PackedLSTM
                self.rnn = cls(ninp, arch["rnn_dim"] // 2, arch["rnn_layers"], bidirectional=True,
                               dropout=arch["rnn_dropout"] if arch["rnn_layers"] > 1 else 0.0)
            self.W = nn.Conv1d(arch["rnn_dim"], arch["emb_dim"], 1)
        else:
            self.W = nn.Conv1d(ninp, arch["emb_dim"], 1)
        if arch["norm_out"]:
            self.norm_out = nn.BatchNorm1d(arch["emb_dim"], affine=False)
        if device is not None:
            self.to(device)
        self.min_samples = self._min_samples()

    def _min_samples(self) -> int:
        """Shortest clip every layer can reflect-pad (torch needs pad < length) that gives a frame."""
        for n in range(1, 100 * self.hop + 1000):
            length, ok = n, True
            for block in self.blocks:
                if length <= max(block.pad):
                    ok = False
                    break
                length = (length + block.pad[0] + block.pad[1] - block.kwidth) // block.stride + 1
                if length < 1:
                    ok = False
                    break
            if ok:
                return n
        raise ConfigError("pase+: this architecture cannot produce a frame from any clip length")

    # ---------------------------------------------------------------- the contract
    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(lengths).to(torch.long)
        for block in self.blocks:
            out = block.out_lengths(out)
        return out

    def config(self) -> dict:
        return {"name": self.name, "dim": self.dim, "frame_rate": self.frame_rate,
                "feature_version": FEATURE_VERSION, "arch": {k: self.arch[k] for k in sorted(self.arch)}}

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be [B, T], got shape {tuple(wav.shape)}")
        lengths = torch.as_tensor(lengths, device=wav.device).to(torch.long).clamp(max=wav.shape[-1])
        if bool((lengths < self.min_samples).any()):
            short = int(lengths.min())
            raise ValueError(f"pase+ needs clips of at least {self.min_samples} samples "
                             f"({1000 * self.min_samples / self.sample_rate:.1f} ms); got one of {short}")
        h = (wav * length_mask(lengths, wav.shape[-1]).to(wav.dtype)).unsqueeze(1)
        h_len = lengths
        skips: list[tuple[torch.Tensor, torch.Tensor]] = []
        n_blocks = len(self.blocks)
        for i, block in enumerate(self.blocks):
            h, h_len = block(h, h_len)
            if hasattr(self, "denseskips") and i < n_blocks - 1:
                skips.append((h, h_len))
        if self.arch["rnn_pool"]:
            h = self.rnn(h.permute(2, 0, 1), h_len).permute(1, 2, 0)
        y = self.W(h)
        for (skip, skip_len), proj in zip(skips, getattr(self, "denseskips", [])):
            y = y + proj(self._pool_skip(skip, skip_len, h_len, y.shape[-1]))
        mask = length_mask(h_len, y.shape[-1])
        if hasattr(self, "norm_out"):
            y = masked_batch_norm(self.norm_out, y, mask)
        if self.arch["tanh_out"]:
            y = torch.tanh(y)
        y = y * mask.unsqueeze(1).to(y.dtype)
        return y.transpose(1, 2), h_len

    @staticmethod
    def _pool_skip(skip: torch.Tensor, skip_len: torch.Tensor, out_len: torch.Tensor, t_out: int) -> torch.Tensor:
        """Average each clip's skip over groups of d = skip_len // out_len frames (WaveFe.fuse_skip)."""
        d = torch.div(skip_len, out_len.clamp(min=1), rounding_mode="floor").clamp(min=1)
        pooled = None
        for factor in torch.unique(d).tolist():
            rows = (d == factor).nonzero().flatten()
            part = skip.index_select(0, rows) if len(rows) < skip.shape[0] else skip
            need = t_out * factor
            if part.shape[-1] < need:
                part = F.pad(part, (0, need - part.shape[-1]))
            part = part[..., :need]
            if factor > 1:
                part = part.reshape(part.shape[0], part.shape[1], t_out, factor).mean(dim=-1)
            if len(rows) == skip.shape[0]:
                return part
            if pooled is None:
                pooled = skip.new_zeros(skip.shape[0], skip.shape[1], t_out)
            pooled = pooled.index_copy(0, rows, part)
        return pooled

    # ---------------------------------------------------------------- checkpoints
    def load_checkpoint(self, path: str | Path) -> None:
        """Load the published `FE_e199.ckpt` (with its JSON config) or an avbench checkpoint.

        Published formats, as the pase repo writes them: a bare `frontend.state_dict()` (the
        FE_e*.ckpt of both trainers), `{"step", "state_dict", "optimizer"}` (its Saver), or
        `{"model": state_dict, ...}` (the worker-scheduler trainer). The config comes from
        `config_path` (constructor) or is found beside the checkpoint: <stem>.cfg/.json, PASE+.cfg,
        or the only *.cfg there; if none is found PASE+.cfg is assumed. A config that describes
        another architecture rebuilds this encoder to it before the weights load.
        """
        path = Path(path)
        obj = load_published_checkpoint(path, "a PASE+ checkpoint")
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}: expected a state dict or a dict holding one, got {type(obj).__name__}")
        if "encoder" in obj and isinstance(obj["encoder"], dict):  # avbench format
            kwargs = obj.get("encoder_kwargs") or {}
            if isinstance(kwargs, dict) and kwargs:
                self._rebuild_from_kwargs(kwargs, path)
            load_state_exactly(self, obj["encoder"], source=path,
                               hint="It was saved by avbench for another pase+ configuration: pass the "
                                    "same encoder keywords it was pretrained with.")
            return
        if "state_dict" in obj and isinstance(obj["state_dict"], dict):
            state = obj["state_dict"]
        elif "model" in obj and isinstance(obj["model"], dict):
            state = obj["model"]
        else:
            state = obj
        non_tensors = sorted(k for k, v in state.items() if not torch.is_tensor(v))
        if non_tensors:
            raise ConfigError(f"{path}: not a PASE frontend state dict (non-tensor entries: {non_tensors[:10]}).")
        if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
            state = {k[len("module."):]: v for k, v in state.items()}
        cfg_path = self.config_path or self._find_config(path)
        if cfg_path is not None:
            arch = read_reference_config(cfg_path)
            if arch != self.arch:
                log.info("pase+: rebuilding to the architecture of %s", cfg_path)
                self._build(arch)
        else:
            log.warning("pase+: no frontend config beside %s; assuming cfg/frontend/PASE+.cfg (pass "
                        "config_path= to use another)", path)
        own = self.state_dict()
        state = dict(state)
        for key in own:  # checkpoints from torch < 0.4.1 lack BatchNorm's step counter
            if key.endswith("num_batches_tracked") and key not in state:
                state[key] = own[key]
        load_state_exactly(self, state, source=path,
                           hint=f"Its frontend config was {cfg_path or 'assumed to be PASE+.cfg'}; give the "
                                "JSON config it was trained with as config_path= (or put it beside the "
                                "checkpoint as <name>.cfg).")

    @staticmethod
    def _find_config(ckpt: Path) -> Path | None:
        folder = ckpt.parent
        candidates = [ckpt.with_suffix(".cfg"), ckpt.with_suffix(".json")] + [folder / n for n in CONFIG_NAMES]
        for cand in candidates:
            if cand.is_file():
                return cand
        cfgs = sorted(folder.glob("*.cfg"))
        return cfgs[0] if len(cfgs) == 1 else None

    def _rebuild_from_kwargs(self, kwargs: dict, source: Path) -> None:
        """Rebuild to the keywords an avbench checkpoint was pretrained with (`encoder_kwargs`)."""
        kwargs = dict(kwargs)
        cfg = kwargs.pop("config_path", None)
        if cfg and not Path(cfg).is_file():
            cfg = None  # the file moved: the current build (from the user's keywords) must match
        try:
            arch = resolve_arch(cfg, **kwargs)
        except ConfigError as exc:
            raise ConfigError(f"{source}: encoder_kwargs do not describe a pase+ encoder ({exc})") from exc
        if arch != self.arch:
            self._build(arch)


# The pretext (workers, targets, online contamination) registers itself on import.
from baselines import pase_workers as _pase_workers  # noqa: E402,F401
