"""Per-channel state tables (rows = channel numbers) kept in step when channels are renumbered."""

from __future__ import annotations

import numpy as np


def keep_rows(table: np.ndarray, keep: np.ndarray, blank=None) -> np.ndarray:
    """The rows ``keep`` (ascending channel numbers) of ``table``, as rows 0, 1, ... of a table of the same
    size (its capacity kept: the next new channel must not double it), the rest ``blank(n)`` rows (zeros
    by default, the kernels' "nothing seen").

    A table may have fewer rows than there are channels (one grown lazily, when a channel first
    delivered): the kept channels past its end have no row in it yet, and get none here either.
    """
    rows = keep[keep < table.shape[0]]
    out = np.zeros_like(table) if blank is None else blank(table.shape[0])
    out[: rows.size] = table[rows]
    return out
