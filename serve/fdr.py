"""Benjamini–Hochberg false discovery rate control over conformal p-values.

Each p-value tests H0 "this image is of a known class"; a rejection flags the image as unknown.
With BH at level q, the expected fraction of known images among those flagged is at most q
(p-values of known images are super-uniform by the conformal construction; BH needs them
independent or PRDS, which exchangeable conformal p-values satisfy, Bates et al. 2023).
"""

from __future__ import annotations

import numpy as np


def bh_adjusted_p_values(p_values: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values): min over j >= i of m * p_(j) / j, capped at 1, in input order."""
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return p.copy()
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("p-values must lie in [0, 1] and not be NaN")
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    monotone = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(monotone, 1.0)
    return adjusted


def benjamini_hochberg(p_values: np.ndarray, q: float) -> np.ndarray:
    """Boolean mask of rejected hypotheses (flagged unknown) at FDR level q, in input order.

    Rejects the k smallest p-values, k being the largest index with p_(k) <= k * q / m.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"FDR level q must be in (0, 1), got {q}")
    return bh_adjusted_p_values(p_values) <= q
