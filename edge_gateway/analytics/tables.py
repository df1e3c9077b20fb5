"""Per-channel state tables (rows = channel numbers) kept in step when channels are renumbered."""

from __future__ import annotations

import numpy as np


def keep_rows(table: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The rows ``keep`` (ascending channel numbers) of ``table``, as rows 0, 1, ... of a new table.

    A table may have fewer rows than there are channels (one grown lazily, when a channel first
    delivered): the kept channels past its end have no row in it yet, and get none here either.
    """
    return table[keep[keep < table.shape[0]]].copy()
