"""osr.serve: decoding, the predictor (onnxruntime or Triton), the batch CLI and the HTTP service.

Never imports torch, not even indirectly: serving machines install numpy, pillow and onnxruntime only.
Import the submodules you need (``osr.serve.predictor``, ``osr.serve.decode``, ...); this file stays
empty so that ``import osr.serve`` is cheap.
"""
