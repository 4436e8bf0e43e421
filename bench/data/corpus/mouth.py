"""Grayscale mouth-region frames rendered on demand from an articulation track.

Frames are drawn rather than stored: a track is 25x3 floats per second, frames would be 25x64x64
bytes. A `FaceIdentity` fixes what differs between speakers (lip shape, skin and lip tone,
position); the track drives what moves. Lips are soft-edged parametric ellipses around a dark
cavity, with a band of teeth that shows as the mouth opens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from bench.data.corpus.visemes import REST

DEFAULT_FRAME_SIZE = 64


@dataclass(frozen=True)
class FaceIdentity:
    lip_width: float = 0.55       # mouth width as a fraction of the frame width
    lip_thickness: float = 0.08   # lip thickness, fraction of the frame height
    skin_tone: float = 0.65       # skin brightness in [0, 1]
    lip_darkness: float = 0.22    # how much darker the lips are than the skin
    center_x: float = 0.0         # mouth offset from the frame centre, fraction of the frame
    center_y: float = 0.05
    cupid_bow: float = 0.3        # depth of the dip in the upper lip

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "FaceIdentity":
        return cls(
            lip_width=float(rng.uniform(0.45, 0.62)),
            lip_thickness=float(rng.uniform(0.06, 0.1)),
            skin_tone=float(rng.uniform(0.45, 0.85)),
            lip_darkness=float(rng.uniform(0.15, 0.3)),
            center_x=float(rng.uniform(-0.05, 0.05)),
            center_y=float(rng.uniform(0.0, 0.1)),
            cupid_bow=float(rng.uniform(0.15, 0.45)),
        )

    def to_dict(self) -> dict[str, float]:
        return {f"face_{k}": round(v, 6) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, row: dict) -> "FaceIdentity":
        return cls(**{k[len("face_"):]: float(v) for k, v in row.items() if k.startswith("face_")})


def _soft_inside(level: np.ndarray, softness: float) -> np.ndarray:
    """Anti-aliased mask from a level function that is < 1 inside the shape."""
    return 1.0 / (1.0 + np.exp(np.clip((level - 1.0) / softness, -50.0, 50.0)))


def render_frames(track: np.ndarray, face: FaceIdentity, size: int = DEFAULT_FRAME_SIZE,
                  jitter_seed: int | None = None, jitter_px: float = 0.6) -> np.ndarray:
    """Render [T, size, size] uint8 frames from a [T, 3] (opening, width, rounding) track.

    `jitter_seed` adds a small per-frame position jitter (head motion), the same for the same seed.
    """
    track = np.asarray(track, dtype=np.float64)
    if track.ndim != 2 or track.shape[1] != 3:
        raise ValueError(f"track must have shape [T, 3], got {track.shape}")
    n = track.shape[0]
    opening, width, rounding = track[:, 0, None, None], track[:, 1, None, None], track[:, 2, None, None]
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    if jitter_seed is not None:
        shift = np.random.default_rng(jitter_seed).normal(0.0, jitter_px * 2.0 / size, size=(n, 2))
    else:
        shift = np.zeros((n, 2))
    cx = face.center_x * 2.0 + shift[:, 0, None, None]
    cy = face.center_y * 2.0 + shift[:, 1, None, None]
    x = xx[None] - cx
    y = yy[None] - cy

    half_width = face.lip_width * (0.8 + 0.35 * width - 0.25 * rounding)
    cavity_half_height = 0.02 + 0.3 * opening
    thickness = face.lip_thickness * 2.0 * (1.0 + 0.4 * rounding)
    # The cupid's bow: the upper lip edge dips at the centre.
    bow = face.cupid_bow * thickness * np.exp(-(x / (0.25 * half_width)) ** 2)
    upper = y < 0
    outer_height = np.where(upper, cavity_half_height + thickness - bow, cavity_half_height + 1.2 * thickness)
    outer = (x / half_width) ** 2 + (y / outer_height) ** 2
    cavity = (x / (0.82 * half_width)) ** 2 + (y / cavity_half_height) ** 2
    softness = 1.5 / size * 4.0
    lips_mask = _soft_inside(outer, softness * 2)
    cavity_mask = _soft_inside(cavity, softness * 2) * np.clip(opening * 6.0, 0.0, 1.0)
    # Upper teeth: a light band just inside the top of the cavity.
    teeth_edge = -cavity_half_height + 0.09
    teeth_mask = cavity_mask * (1.0 / (1.0 + np.exp((y - teeth_edge) / 0.015)))

    skin = face.skin_tone * (1.0 - 0.15 * (yy[None] + 1.0) / 2.0)  # soft light from above
    skin = skin - 0.08 * np.exp(-((yy[None] + 1.0) / 0.25) ** 2)   # shadow under the nose
    lip_tone = face.skin_tone - face.lip_darkness
    image = skin * (1 - lips_mask) + lip_tone * lips_mask
    image = image * (1 - cavity_mask) + 0.08 * cavity_mask
    image = image * (1 - teeth_mask) + 0.88 * teeth_mask
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def identity_frame(face: FaceIdentity, size: int = DEFAULT_FRAME_SIZE) -> np.ndarray:
    """The still frame of a speaker at rest (lips closed): the visual pretext's identity input."""
    return render_frames(np.asarray([REST]), face, size=size)[0]
