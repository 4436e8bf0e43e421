"""PASE+ architecture settings: PASE+.cfg, WaveFe's defaults, and reading reference JSON configs.

An architecture is a dict with the reference's JSON names (kwidths, strides, fmaps, rnn_type, ...),
validated and normalised here. It is apart from baselines.pase because it is pure configuration
handling (no tensors): the encoder builds from it, and loading a published checkpoint re-reads the
JSON config found beside it to rebuild the encoder before the weights load.
"""

from __future__ import annotations

import json
from pathlib import Path

from baselines.pase_layers import SAMPLE_RATE
from bench.errors import ConfigError

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
