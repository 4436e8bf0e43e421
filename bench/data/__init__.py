"""Stage 1, data: takes corpora (the embedded synthesiser or a user's copy of a real one) and
hands on manifests, the one format everything downstream reads.

Also here: task resolution (`embedded:default`, a manifest path, a prepared name, `:col=value`
subsets), task types (words, speakers, emotion) as views of a manifest, audio and video
decoding, mouth frames for the visual objective, PyTorch datasets over clips, and the feature
cache that stores an encoder's per-clip frames once for every later read.
"""
