"""Reading published wav2vec 1.0 checkpoints: fairseq's `wav2vec_large.pt` and s3prl's conversions.

`read_published_checkpoint` reads either format safely and describes it (kind, normalised
architecture, objective settings, dropout, state dict) so that the encoder can check the
architecture before loading and the pretext can load the prediction head. It is apart from
baselines.wav2vec because it is about the two foreign file formats and their argument defaults,
not about the network.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from baselines.wav2vec_arch import ARCH_KEYS, _normalised_arch
from bench.checkpoints import load_published_checkpoint
from bench.errors import ConfigError

HEAD_PREFIX = "wav2vec_predictions."

# Defaults of a fairseq argparse `args` Namespace lacking a field: fairseq's
# `base_wav2vec_architecture` (the values s3prl's wav2vec expert fills in before building).
_NAMESPACE_DEFAULTS: dict[str, Any] = {
    "conv_feature_layers": "[(512, 10, 5)] + [(512, 8, 4)] + [(512, 4, 2)] * 3",
    "conv_aggregator_layers": "[(512, 3, 1)] * 9",
    "prediction_steps": 12, "num_negatives": 1, "sample_distance": None, "cross_sample_negatives": 0,
    "dropout": 0.0, "dropout_features": 0.0, "dropout_agg": 0.0, "aggregator": "cnn",
    "skip_connections_feat": False, "skip_connections_agg": False, "residual_scale": 0.5,
    "no_conv_bias": False, "agg_zero_pad": False, "log_compression": False, "balanced_classes": False,
    "infonce": False, "project_features": "none", "non_affine_group_norm": False, "offset": "auto",
    "activation": "relu", "vq_type": "none",
}
# Defaults of a hydra-era model config (fairseq's / s3prl's `Wav2VecConfig` dataclass), used for
# s3prl's converted checkpoints, whose `model_cfg` is that config as a plain dict.
_DATACLASS_DEFAULTS: dict[str, Any] = {
    **_NAMESPACE_DEFAULTS,
    "conv_feature_layers": "[(512, 10, 5), (512, 8, 4), (512, 4, 2), (512, 4, 2), (512, 4, 2), "
                           "(512, 1, 1), (512, 1, 1), (512, 1, 1)]",
    "conv_aggregator_layers": "[" + ", ".join(f"(512, {k}, 1)" for k in range(2, 14)) + "]",
    "num_negatives": 10, "skip_connections_agg": True, "log_compression": True,
}


@dataclass
class PublishedCheckpoint:
    """A fairseq or s3prl wav2vec checkpoint, read safely and described."""

    path: Path
    kind: str                   # "fairseq" or "s3prl"
    arch: dict[str, Any]        # normalised ARCH_KEYS (comparable to Wav2Vec.architecture())
    objective: dict[str, Any]   # prediction_steps, num_negatives, offset, balanced_classes, infonce
    dropout: dict[str, float]   # dropout, dropout_features, dropout_agg (training only; not applied)
    state: dict[str, torch.Tensor]


_UNSUPPORTED = {  # field -> (allowed values, why)
    "skip_connections_feat": ({False}, "feature-extractor skip connections subsample the residual by the "
                                       "padded length in fairseq, so they cannot be padding-invariant"),
    "aggregator": ({"cnn"}, "only the convolutional context network is implemented (not the GRU one)"),
    "vq_type": ({"none", None}, "this is a vq-wav2vec checkpoint; only wav2vec 1.0 is implemented"),
    "project_features": ({"none", None}, "projected targets (project_features) are not implemented"),
}


def read_published_checkpoint(path: str | Path) -> PublishedCheckpoint | None:
    """Read a fairseq/s3prl wav2vec checkpoint; None when the file is in neither format."""
    path = Path(path)
    raw = load_published_checkpoint(path, "a wav2vec checkpoint")
    if not isinstance(raw, Mapping):
        return None
    if "model_weight" in raw and "model_cfg" in raw:
        cfg, state, kind = raw["model_cfg"], raw["model_weight"], "s3prl"
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{path}: s3prl checkpoint's model_cfg is a {type(cfg).__name__}, expected a dict.")
        get, name = (lambda k: cfg.get(k, _DATACLASS_DEFAULTS.get(k))), cfg.get("_name", "wav2vec")
    elif "model" in raw and "args" in raw:
        args, state, kind = raw["args"], raw["model"], "fairseq"
        if not isinstance(args, argparse.Namespace):
            hydra = " (a hydra-era fairseq checkpoint keeps its config under 'cfg': convert it with s3prl)" \
                if args is None and "cfg" in raw else ""
            raise ConfigError(f"{path}: fairseq checkpoint's 'args' is {type(args).__name__}, expected an "
                              f"argparse.Namespace{hydra}.")
        get, name = (lambda k: getattr(args, k, _NAMESPACE_DEFAULTS.get(k))), getattr(args, "arch", "wav2vec")
    else:
        return None
    if name != "wav2vec":
        raise ConfigError(f"{path}: a {kind} checkpoint of model {name!r}, not wav2vec 1.0 ('wav2vec').")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: the {kind} checkpoint's state dict is not a mapping of tensors.")
    for field, (allowed, why) in _UNSUPPORTED.items():
        if get(field) not in allowed:
            raise ConfigError(f"{path}: {field}={get(field)!r} is not supported: {why}.")
    try:
        arch = _normalised_arch({k: get(k) for k in ARCH_KEYS})
    except ConfigError as exc:
        raise ConfigError(f"{path}: bad architecture in the {kind} checkpoint's args: {exc}") from exc
    objective = {k: get(k) for k in ("prediction_steps", "num_negatives", "offset", "balanced_classes", "infonce")}
    dropout = {k: float(get(k)) for k in ("dropout", "dropout_features", "dropout_agg")}
    return PublishedCheckpoint(path=path, kind=kind, arch=arch, objective=objective, dropout=dropout,
                               state=dict(state))
