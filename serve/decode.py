"""Decoding and resizing for serving: the shared implementation in ``osr.images``.

Training decodes ImageFolder images with the same code, so served pixels equal evaluation pixels.
"""

from osr.images import (  # noqa: F401  (re-exported: the serving API)
    ACCEPTED_FORMATS,
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    MAX_SIDE,
    RESIZE_RULE,
    DecodeError,
    decode_file,
    decode_image,
    decode_to_pil,
    max_file_bytes,
    read_image_file,
    resize_for_model,
)
