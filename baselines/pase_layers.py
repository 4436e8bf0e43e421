"""The layers of the PASE+ front end (pase WaveFe): SincNet, FeBlock, the QRNN and packed RNNs.

Each layer keeps the reference's parameter names so a published state dict loads key for key,
and each takes valid lengths so padding never leaks into valid frames (per-clip reflect padding,
BatchNorm statistics over valid frames only). They are apart from baselines.pase, which wires
them into the registered PASEPlus encoder, so that the encoder module reads as the architecture
and its checkpoint contract; the facts each layer follows are in baselines.pase's docstring.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError

SAMPLE_RATE = 16_000


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
