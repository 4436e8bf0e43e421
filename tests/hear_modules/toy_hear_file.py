"""toy_hear whose load_model needs a weights file, as modules without default weights do."""

from toy_hear import get_scene_embeddings, get_timestamp_embeddings  # noqa: F401
import toy_hear


def load_model(model_file_path: str = ""):
    if not model_file_path:
        raise ValueError("toy_hear_file has no default weights: pass a model file")
    return toy_hear.load_model(model_file_path)
