"""wav2vec 1.0 architecture settings: the presets, fairseq's layer specs, and frame arithmetic.

An architecture is a dict of fairseq's argument names (conv_feature_layers, conv_aggregator_layers,
skip_connections_agg, ...). This module holds the two presets, parses fairseq's layer-spec strings
without eval(), normalises an architecture for comparison, and computes valid frames, receptive
field and the pretext's automatic offset. It is apart from baselines.wav2vec because the encoder,
the checkpoint reader (which compares a checkpoint's args with the encoder) and the pretext all
need it, and none of it holds weights.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from typing import Any, Sequence

import torch
from torch import nn

from bench.errors import ConfigError

Layer = tuple[int, int, int]  # (channels, kernel, stride), fairseq's layer triples

BASE_ARCH: dict[str, Any] = {
    "conv_feature_layers": ((512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2)),
    "conv_aggregator_layers": ((512, 3, 1),) * 9,
    "skip_connections_agg": False,
    "residual_scale": 0.5,
    "log_compression": False,
    "agg_zero_pad": False,
    "no_conv_bias": False,
    "non_affine_group_norm": False,
    "activation": "relu",
    "dropout": 0.0,
    "dropout_features": 0.0,
    "dropout_agg": 0.0,
}
LARGE_ARCH: dict[str, Any] = {
    **BASE_ARCH,
    "conv_feature_layers": BASE_ARCH["conv_feature_layers"] + ((512, 1, 1), (512, 1, 1)),
    "conv_aggregator_layers": tuple((512, k, 1) for k in range(2, 14)),
    "skip_connections_agg": True,
    "log_compression": True,
}
PRESETS = {"wav2vec": BASE_ARCH, "wav2vec_large": LARGE_ARCH}
# The fields that decide the weights' shapes and the features; dropout only acts in training.
ARCH_KEYS = ("conv_feature_layers", "conv_aggregator_layers", "skip_connections_agg", "residual_scale",
             "log_compression", "agg_zero_pad", "no_conv_bias", "non_affine_group_norm", "activation")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def parse_conv_layers(spec: str | Sequence[Sequence[int]], field: str = "conv layers") -> tuple[Layer, ...]:
    """fairseq's layer spec -> ((channels, kernel, stride), ...), without eval().

    fairseq evals strings such as "[(512, 10, 5)] + [(512, 4, 2)] * 3"; this accepts exactly that
    language (lists and tuples of integers, list + list, list * int) and nothing else.
    """
    if isinstance(spec, str):
        try:
            tree = ast.parse(spec.strip(), mode="eval").body
            value = _literal_layers(tree)
        except (SyntaxError, ValueError) as exc:
            raise ConfigError(f"{field}: cannot read {spec!r} ({exc}); give fairseq's form, e.g. "
                              "'[(512, 10, 5), (512, 8, 4)]' or '[(512, 3, 1)] * 9'.") from exc
    else:
        value = spec
    try:
        layers = tuple((int(c), int(k), int(s)) for c, k, s in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field}: expected a list of (channels, kernel, stride) triples, got {spec!r}") from exc
    if not layers or any(v <= 0 for layer in layers for v in layer):
        raise ConfigError(f"{field}: need at least one layer and positive channels, kernels and strides, "
                          f"got {list(layers)}")
    return layers


def _literal_layers(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal_layers(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal_layers(node.left), _literal_layers(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
        if isinstance(node.op, ast.Mult) and isinstance(left, list) and isinstance(right, int):
            return left * right
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, list):
            return right * left
    raise ValueError(f"unsupported expression {ast.dump(node)[:60]}")


def conv_output_lengths(lengths: torch.Tensor, layers: Sequence[Layer]) -> torch.Tensor:
    """Valid frames after unpadded convs: floor((L - k) / s) + 1 per layer, 0 once L < k."""
    out = torch.as_tensor(lengths, dtype=torch.long)
    for _, k, s in layers:
        out = torch.where(out >= k, torch.div(out - k, s, rounding_mode="floor") + 1, torch.zeros_like(out))
    return out


def receptive_field(layers: Sequence[Layer]) -> tuple[int, int]:
    """(receptive field, hop) in samples of the encoder's last layer."""
    rf, hop = 1, 1
    for _, k, s in layers:
        rf += (k - 1) * hop
        hop *= s
    return rf, hop


def auto_offset(layers: Sequence[Layer]) -> int:
    """fairseq's `offset="auto"`: ceil(receptive field / hop), the first step whose target z no
    longer overlaps the receptive field of the context frame predicting it (3 for both models)."""
    rf, hop = receptive_field(layers)
    return math.ceil(rf / hop)


def _normalised_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """The ARCH_KEYS of `arch`, typed, with residual_scale dropped where no skip uses it."""
    out = {
        "conv_feature_layers": parse_conv_layers(arch["conv_feature_layers"], "conv_feature_layers"),
        "conv_aggregator_layers": parse_conv_layers(arch["conv_aggregator_layers"], "conv_aggregator_layers"),
        "skip_connections_agg": bool(arch["skip_connections_agg"]),
        "residual_scale": float(arch["residual_scale"]) if arch["skip_connections_agg"] else None,
        "log_compression": bool(arch["log_compression"]),
        "agg_zero_pad": bool(arch["agg_zero_pad"]),
        "no_conv_bias": bool(arch["no_conv_bias"]),
        "non_affine_group_norm": bool(arch["non_affine_group_norm"]),
        "activation": str(arch["activation"]),
    }
    return out
