"""osr.serve: decoding, the predictor (onnxruntime or Triton), the batch CLI and the HTTP service.

Never imports torch, not even indirectly: serving machines install numpy, pillow and onnxruntime only.
The Python API is ``from osr.serve import load_model`` (serve/api.py). Import other submodules as
you need them (``osr.serve.predictor``, ``osr.serve.decode``, ...); ``import osr.serve`` itself
stays cheap: ``load_model`` and ``Model`` are imported on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Model", "load_model"]


def __getattr__(name: str) -> Any:  # PEP 562: the API module (numpy, Pillow) loads on first use
    if name in __all__:
        from osr.serve import api

        return getattr(api, name)
    raise AttributeError(f"module 'osr.serve' has no attribute {name!r}")
