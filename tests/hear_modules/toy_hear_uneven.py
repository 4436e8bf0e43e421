"""toy_hear with timestamps that are not evenly spaced (alternately 20 and 30 ms apart): no frame rate."""

import torch

from toy_hear import get_scene_embeddings, load_model  # noqa: F401
import toy_hear


def get_timestamp_embeddings(audio, model):
    embeddings, timestamps = toy_hear.get_timestamp_embeddings(audio, model)
    steps = torch.tensor([0.0] + [20.0 if k % 2 else 30.0 for k in range(1, timestamps.shape[1])])
    return embeddings, torch.cumsum(steps, 0).expand_as(timestamps)
