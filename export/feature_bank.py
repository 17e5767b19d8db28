"""The kNN known-ness score (Sun et al. 2022, "Out-of-distribution detection with deep nearest
neighbors"): the cosine similarity of an image's penultimate features to its k-th nearest
training feature. The training features travel inside the exported graph as a float16 bank of
unit rows, a few hundred images per class, so the graph still decides on its own.

The penultimate features are the input of the model's classifier head (its last ``nn.Linear``):
``split_head`` cuts the model there and checks that ``head(body(x))`` is the model.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from torch import nn

from osr.train.choices import KNN_DEFAULT_BANK_PER_CLASS as DEFAULT_BANK_PER_CLASS
from osr.train.pretrained import head_name

MAX_BANK_BYTES = 1_000_000_000  # a protobuf (the ONNX file) holds 2 GB, the network included


def split_head(model: nn.Module, probe: torch.Tensor) -> tuple[nn.Module, nn.Linear]:
    """(body, head) with head(body(x)) == model(x): a copy of the model whose last Linear is an
    Identity, and that Linear. ``probe`` (a normalised input batch) checks the cut; a model that
    does more after its last Linear is refused."""
    name = head_name(model)
    if name is None:
        raise ValueError("the kNN score needs the classifier head's input, but the model has no nn.Linear")
    head = model.get_submodule(name)
    body = copy.deepcopy(model).eval()
    body.set_submodule(name, nn.Identity())
    with torch.no_grad():
        expected, got = model.eval()(probe), head(body(probe))
    if expected.shape != got.shape or not torch.allclose(expected, got, atol=1e-4, rtol=1e-4):
        raise ValueError(f"the model does more after its last Linear ({name!r}); the kNN score cannot find "
                         "its penultimate features")
    return body, head


def knn_similarity(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Cosine similarity of each row of ``features`` to its k-th most similar row of ``bank``
    (unit rows). Higher = more known."""
    unit = nn.functional.normalize(features.float(), dim=1)
    return (unit @ bank.float().T).topk(k, dim=1).values[:, k - 1]


def pick_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``per_class`` random items of each label, sorted."""
    rng = np.random.default_rng(seed)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def build_bank(
    features_of: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    labels: np.ndarray,
    per_class: int = DEFAULT_BANK_PER_CLASS,
    seed: int = 0,
    batch_size: int = 256,
) -> np.ndarray:
    """float16 [N, D] unit rows: the features of up to ``per_class`` training images per class.
    ``features_of`` maps a uint8 NHWC batch to features exactly as the graph does."""
    if per_class < 1:
        raise ValueError(f"the kNN bank needs at least one image per class, got {per_class}")
    picked = pick_per_class(np.asarray(labels), per_class, seed)
    if len(picked) == 0:
        raise ValueError("the kNN bank needs training images, and there are none")
    parts = []
    for start in range(0, len(picked), batch_size):
        parts.append(features_of(torch.from_numpy(np.ascontiguousarray(images[picked[start:start + batch_size]]))))
        size = len(picked) * parts[0].shape[1] * 2  # float16
        if size > MAX_BANK_BYTES:  # known after the first batch: refuse before the rest
            raise ValueError(f"the kNN bank would take {size / 1e9:.2f} GB ({len(picked)} x {parts[0].shape[1]} "
                             f"float16); an ONNX file holds at most 2 GB: lower --knn-bank-per-class (now {per_class})")
    return nn.functional.normalize(torch.cat(parts).float(), dim=1).to(torch.float16).numpy()
