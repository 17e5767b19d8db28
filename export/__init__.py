"""osr.export: turn a training checkpoint into a Triton-style model repository.

The exported ONNX graph carries the whole decision (preprocessing, score, conformal threshold,
p-value); `osr.export.manifest` is stdlib-only so the serving side can read manifests without
torch.
"""
