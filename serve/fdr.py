"""Benjamini–Hochberg false discovery rate control over conformal p-values.

Each p-value tests H0 "this image is of a known class"; a rejection flags the image as unknown.
With BH at level q, the expected fraction of known images among those flagged is at most q
(p-values of known images are super-uniform by the conformal construction; BH needs them
independent or PRDS, which exchangeable conformal p-values satisfy, Bates et al. 2023).

``add_fdr_column`` is osr-score --fdr: a second pass over a finished results file that adds the
column bh_unknown.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from osr.atomic import atomic_path
from osr.serve.score_output import CSV_FIELDS, FDR_COLUMN, RowWriter, csv_header, iter_output_rows


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


def add_fdr_column(path: Path, fmt: str, q: float) -> tuple[int, int]:
    """Second pass: write column bh_unknown (BH at level q over all ok rows). Returns (flagged, tested)."""
    p_values = np.fromiter(
        (float(row["p_value"]) for row in iter_output_rows(path, fmt) if row.get("status") == "ok"),
        dtype=np.float64,
    )
    flagged = benjamini_hochberg(p_values, q) if p_values.size else np.zeros(0, bool)
    with atomic_path(path) as temp:
        fieldnames = None
        if fmt == "csv":
            header = csv_header(path) or list(CSV_FIELDS)
            fieldnames = header + ([FDR_COLUMN] if FDR_COLUMN not in header else [])
        writer = RowWriter(temp, fmt, fieldnames)
        write = writer.write_cells if fmt == "csv" else writer.write
        index = 0
        buffer: list[dict] = []
        for row in iter_output_rows(path, fmt):
            if row.get("status") == "ok":
                row[FDR_COLUMN] = bool(flagged[index])
                index += 1
            else:
                row[FDR_COLUMN] = None
            if fmt == "csv":
                row[FDR_COLUMN] = "" if row[FDR_COLUMN] is None else str(row[FDR_COLUMN])
            buffer.append(row)
            if len(buffer) >= 1024:
                write(buffer)
                buffer.clear()
        write(buffer)
        writer.close()
    return int(flagged.sum()), int(p_values.size)
