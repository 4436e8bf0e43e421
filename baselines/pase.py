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
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.checkpoints import load_published_checkpoint
from bench.errors import ConfigError
from bench.registry import Encoder, load_state_exactly, register_encoder

log = logging.getLogger("avbench.pase")

SAMPLE_RATE = 16_000
# Bump when a change here changes the features: cached ones go stale.
FEATURE_VERSION = 1

# cfg/frontend/PASE+.cfg of santi-pdp/pase (plus the WaveFe defaults it relies on: sincnet,
# BatchNorm, reflect padding, emb_dim 256, sum-merged dense skips).
PASE_PLUS_CONFIG: dict = {
    "kwidths": [251, 20, 11, 11, 11, 11, 11, 11],
    "strides": [1, 10, 2, 1, 2, 1, 2, 2],
    "fmaps": [64, 64, 128, 128, 256, 256, 512, 512],
    "rnn_dim": 512,
    "denseskips": True,
    "norm_out": True,
    "rnn_pool": True,
    "rnn_layers": 1,
    "rnn_type": "qrnn",
}

# WaveFe's constructor defaults (pase/models/frontend.py), which a reference JSON config overrides.
WAVEFE_DEFAULTS: dict = {
    "kwidths": [251, 10, 5, 5, 5, 5, 5, 5],
    "strides": [1, 10, 2, 1, 2, 1, 2, 2],
    "fmaps": [64, 64, 128, 128, 256, 256, 512, 512],
    "emb_dim": 256,
    "rnn_dim": None,  # None: emb_dim
    "rnn_pool": False,
    "rnn_type": "qrnn",
    "rnn_layers": 1,
    "rnn_dropout": 0.0,
    "denseskips": False,
    "norm_out": False,
    "tanh_out": False,
    "sincnet": True,
}
# Reference config keys accepted only at the one value this implementation supports.
_FIXED_KEYS: dict = {
    "num_inputs": (1,), "sr": (SAMPLE_RATE,), "norm_type": ("bnorm",), "pad_mode": ("reflect",),
    "densemerge": ("sum",), "resblocks": (False,), "activation": (None, "prelu"), "vq_K": (None, 0),
}
_IGNORED_KEYS = ("vq_beta", "vq_gamma", "vq_loss_weight")  # only meaningful with vq_K
RNN_TYPES = ("qrnn", "gru", "lstm")
CONFIG_NAMES = ("PASE+.cfg", "pase+.cfg", "PASE+.json", "pase+.json")


def _to_mel(hz):
    return 2595 * np.log10(1 + hz / 700)


def _to_hz(mel):
    return 700 * (10 ** (mel / 2595) - 1)


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device) < lengths.reshape(-1, 1)


def reflect_pad(x: torch.Tensor, lengths: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """F.pad(x, (left, right), mode="reflect") applied to each clip at its own valid end.

    x [B, C, T] with valid lengths [B] (each > max(left, right), as torch's reflect requires). The
    padded clip is x[b, :, :lengths[b]] reflected as if alone; positions past its padded end hold
    arbitrary valid samples and only feed outputs beyond the clip's output length.
    """
    B, C, T = x.shape
    if left == 0 and right == 0:
        return x
    if bool((lengths >= T).all()):
        return F.pad(x, (left, right), mode="reflect")
    idx = torch.arange(-left, T + right, device=x.device).unsqueeze(0)  # [1, T + left + right]
    last = (lengths.to(x.device).reshape(-1, 1) - 1)
    j = idx.abs()
    j = torch.where(j > last, 2 * last - j, j).clamp(0, T - 1)
    return x.gather(2, j.unsqueeze(1).expand(B, C, j.shape[1]))


def masked_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """BatchNorm1d whose training statistics (and running-average updates) use valid frames only.

    Same arithmetic as nn.BatchNorm1d when nothing is masked (biased variance to normalise,
    unbiased for the running average, momentum or cumulative averaging as configured).
    """
    if not bn.training or mask is None or bool(mask.all()):
        return bn(x)
    m = mask.to(x.dtype).unsqueeze(1)  # [B, 1, T]
    n = m.sum()
    mean = (x * m).sum(dim=(0, 2)) / n
    var = ((x - mean[None, :, None]).square() * m).sum(dim=(0, 2)) / n
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            unbiased = var * (n / (n - 1).clamp(min=1))
            bn.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
            bn.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
    y = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + bn.eps)
    if bn.affine:
        y = y * bn.weight[None, :, None] + bn.bias[None, :, None]
    return y


class SincConv(nn.Module):
    """SincNet layer with the reference `SincConv_fast` parametrisation (keys low_hz_, band_hz_).

    forward takes an input that is already padded and applies no padding of its own.
    """

    def __init__(self, out_channels: int, kernel_size: int, sample_rate: int = SAMPLE_RATE,
                 min_low_hz: float = 50.0, min_band_hz: float = 50.0) -> None:
        super().__init__()
        if kernel_size % 2 == 0:  # the reference forces symmetric (odd) filters
            kernel_size += 1
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.sample_rate = sample_rate
        self.min_low_hz = min_low_hz
        self.min_band_hz = min_band_hz
        high_hz = sample_rate / 2 - (min_low_hz + min_band_hz)
        hz = _to_hz(np.linspace(_to_mel(30), _to_mel(high_hz), out_channels + 1))
        self.low_hz_ = nn.Parameter(torch.Tensor(hz[:-1]).view(-1, 1))
        self.band_hz_ = nn.Parameter(torch.Tensor(np.diff(hz)).view(-1, 1))
        # Left half of the Hamming window and of the time axis (the filters are symmetric). The
        # window's 125 points span 0..124.5 (linspace(0, K/2 - 1, int(K/2))), exactly as the reference.
        n_lin = torch.linspace(0, (kernel_size / 2) - 1, steps=int(kernel_size / 2))
        self.register_buffer("window_", 0.54 - 0.46 * torch.cos(2 * math.pi * n_lin / kernel_size),
                             persistent=False)
        n = (kernel_size - 1) / 2.0
        self.register_buffer("n_", 2 * math.pi * torch.arange(-n, 0).view(1, -1) / sample_rate, persistent=False)

    def filters(self) -> torch.Tensor:
        low = self.min_low_hz + torch.abs(self.low_hz_)
        high = torch.clamp(low + self.min_band_hz + torch.abs(self.band_hz_), self.min_low_hz, self.sample_rate / 2)
        band = (high - low)[:, 0]
        left = ((torch.sin(torch.matmul(high, self.n_)) - torch.sin(torch.matmul(low, self.n_)))
                / (self.n_ / 2)) * self.window_
        centre = 2 * band.view(-1, 1)
        band_pass = torch.cat([left, centre, torch.flip(left, dims=[1])], dim=1) / (2 * band[:, None])
        return band_pass.view(self.out_channels, 1, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.filters())


class FeBlock(nn.Module):
    """One front-end layer (reference FeBlock): padding -> conv -> BatchNorm -> PReLU."""

    def __init__(self, num_inputs: int, fmaps: int, kwidth: int, stride: int, sincnet: bool) -> None:
        super().__init__()
        self.sincnet = sincnet
        if sincnet:
            if num_inputs != 1 or stride != 1:
                raise ConfigError("pase+: the SincNet first layer needs 1 input channel and stride 1 "
                                  f"(got {num_inputs} and {stride}).")
            self.conv = SincConv(fmaps, kwidth)
            k = self.conv.kernel_size
            self.pad = (k // 2, k // 2)  # 'SAME' padding at stride 1
        else:
            self.conv = nn.Conv1d(num_inputs, fmaps, kwidth, stride)
            k = kwidth
            self.pad = (k // 2 - 1, k // 2) if (stride > 1 or k % 2 == 0) else (k // 2, k // 2)
        self.kwidth = k
        self.stride = stride
        self.norm = nn.BatchNorm1d(fmaps)
        self.act = nn.PReLU(fmaps, init=0)

    def out_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        total = lengths + self.pad[0] + self.pad[1]
        return torch.div(total - self.kwidth, self.stride, rounding_mode="floor") + 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(reflect_pad(x, lengths, *self.pad))
        out_len = self.out_lengths(lengths)
        h = masked_batch_norm(self.norm, h, length_mask(out_len, h.shape[-1]))
        return self.act(h), out_len


class QRNNLayer(nn.Module):
    """QRNN-fo layer with window 2, parameter-compatible with torchqrnn.QRNNLayer (key `linear`)."""

    def __init__(self, input_size: int, hidden_size: int, window: int = 2) -> None:
        super().__init__()
        if window not in (1, 2):
            raise ConfigError(f"pase+: QRNN window must be 1 or 2, got {window}")
        self.window = window
        self.hidden_size = hidden_size
        self.linear = nn.Linear(window * input_size, 3 * hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, B, input_size] -> h [T, B, hidden_size] (causal)."""
        if self.window == 2:
            prev = torch.cat([torch.zeros_like(x[:1]), x[:-1]], dim=0)
            x = torch.cat([x, prev], dim=2)
        z, f, o = self.linear(x).chunk(3, dim=2)
        z, f = torch.tanh(z), torch.sigmoid(f)
        fz, keep = f * z, 1 - f
        c = fz[0]
        cells = [c]
        for t in range(1, fz.shape[0]):
            c = fz[t] + keep[t] * c
            cells.append(c)
        return torch.sigmoid(o) * torch.stack(cells, dim=0)


class QRNN(nn.Module):
    """Stack of QRNN layers (torchqrnn.QRNN layout: `layers.<i>.linear`)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(QRNNLayer(input_size if i == 0 else hidden_size, hidden_size)
                                    for i in range(num_layers))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.dropout and i < len(self.layers) - 1:
                x = F.dropout(x, p=self.dropout, training=self.training)
        return x


class _Packed:
    """Runs the reference's bidirectional GRU/LSTM (`build_rnn_block`) on packed sequences, so a
    clip's backward direction starts at its own last frame. Subclassing the torch RNN keeps the
    reference's parameter names (`rnn.weight_ih_l0`, ...)."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # x [T, B, C]
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        out, _ = super().forward(packed)
        return nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])[0]


class PackedGRU(_Packed, nn.GRU):
    pass


class PackedLSTM(_Packed, nn.LSTM):
    pass


def _validate_arch(arch: dict, source: str) -> dict:
    """Check an architecture dict (reference JSON names) and return it normalised."""
    kw, st, fm = (list(arch[k]) for k in ("kwidths", "strides", "fmaps"))
    if not (len(kw) == len(st) == len(fm)) or not kw:
        raise ConfigError(f"{source}: kwidths, strides and fmaps must be non-empty lists of one length, "
                          f"got {len(kw)}, {len(st)}, {len(fm)}")
    if any(int(v) < 1 for v in kw + st + fm):
        raise ConfigError(f"{source}: kwidths, strides and fmaps must be positive integers")
    rnn_type = str(arch["rnn_type"]).lower()
    if rnn_type not in RNN_TYPES:
        raise ConfigError(f"{source}: rnn_type {arch['rnn_type']!r} is not supported; "
                          f"use one of {', '.join(RNN_TYPES)}")
    out = dict(arch, kwidths=[int(v) for v in kw], strides=[int(v) for v in st], fmaps=[int(v) for v in fm],
               rnn_type=rnn_type, emb_dim=int(arch["emb_dim"]),
               rnn_dim=int(arch["rnn_dim"] if arch["rnn_dim"] is not None else arch["emb_dim"]),
               rnn_layers=int(arch["rnn_layers"]), rnn_dropout=float(arch["rnn_dropout"]))
    for key in ("rnn_pool", "denseskips", "norm_out", "tanh_out", "sincnet"):
        out[key] = bool(out[key])
    if out["emb_dim"] < 1 or out["rnn_layers"] < 1:
        raise ConfigError(f"{source}: emb_dim and rnn_layers must be positive")
    if out["rnn_pool"] and out["rnn_dim"] % 2:
        raise ConfigError(f"{source}: rnn_dim must be even (the reference builds rnn_dim // 2 units per "
                          f"direction), got {out['rnn_dim']}")
    if out["sincnet"] and out["strides"][0] != 1:
        raise ConfigError(f"{source}: the SincNet first layer must have stride 1, got {out['strides'][0]}")
    return out


def arch_from_reference_config(cfg: dict, source: str | Path) -> dict:
    """Map a reference frontend JSON (e.g. cfg/frontend/PASE+.cfg) onto this module's architecture.

    Missing keys take WaveFe's constructor defaults, as `wf_builder` would.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: a PASE frontend config must be a JSON object")
    if "name" in cfg:
        raise ConfigError(f"{source}: frontend type {cfg['name']!r} is not the WaveFe (PASE/PASE+) front end; "
                          "only WaveFe configs (no 'name' field) are supported")
    problems = []
    for key, allowed in _FIXED_KEYS.items():
        if key in cfg and cfg[key] not in allowed:
            problems.append(f"{key}={cfg[key]!r} (supported: {', '.join(map(repr, allowed))})")
    if "dilations" in cfg and any(int(d) != 1 for d in cfg["dilations"]):
        problems.append(f"dilations={cfg['dilations']} (only 1)")
    unknown = sorted(set(cfg) - set(WAVEFE_DEFAULTS) - set(_FIXED_KEYS) - set(_IGNORED_KEYS) - {"dilations"})
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if problems:
        raise ConfigError(f"{source}: unsupported PASE frontend settings: {'; '.join(problems)}")
    arch = dict(WAVEFE_DEFAULTS)
    arch.update({k: v for k, v in cfg.items() if k in WAVEFE_DEFAULTS})
    return _validate_arch(arch, str(source))


def read_reference_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: PASE frontend config not found (config_path).")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a JSON frontend config ({exc}).") from exc
    return arch_from_reference_config(cfg, path)


# The default architecture: PASE+.cfg on top of WaveFe's defaults.
ARCH_DEFAULTS: dict = arch_from_reference_config(PASE_PLUS_CONFIG, "cfg/frontend/PASE+.cfg")


def resolve_arch(config_path: str | Path | None = None, **given) -> dict:
    """Architecture from PASE+.cfg (or the JSON at config_path), overridden by non-None keywords.

    Giving emb_dim without rnn_dim (and without a config file) keeps PASE+'s rnn_dim = 2 * emb_dim.
    """
    unknown = sorted(set(given) - set(WAVEFE_DEFAULTS))
    if unknown:
        raise ConfigError(f"pase+: unknown architecture keywords {unknown}; "
                          f"known: {', '.join(sorted(WAVEFE_DEFAULTS))}")
    arch = read_reference_config(config_path) if config_path else dict(ARCH_DEFAULTS)
    given = {k: v for k, v in given.items() if v is not None}
    if "emb_dim" in given and "rnn_dim" not in given and not config_path:
        given["rnn_dim"] = 2 * int(given["emb_dim"])
    arch.update(given)
    return _validate_arch(arch, str(config_path or "pase+"))


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
