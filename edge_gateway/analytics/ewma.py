"""EWMA z-score: how many running standard deviations a reading is from the running mean.

State per channel: ``[mean, var, n]``. A reading is scored against the state
*before* it is folded in, so a spike cannot hide itself. Scores during the
first ``warmup`` readings of a channel are 0: the variance is not known yet.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import kernel

E_MEAN, E_VAR, E_N = range(3)
STATE_WIDTH = 3


def new_state(n_channels: int) -> np.ndarray:
    return np.zeros((n_channels, STATE_WIDTH), dtype=np.float64)


@kernel
def ewma_zscore(chan, val, alpha, warmup, state, score):
    """Write each reading's |z| to ``score`` and update the channel's state."""
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            score[i] = 0.0
            continue
        s = state[chan[i]]
        if s[E_N] == 0:
            s[E_MEAN] = x
            s[E_VAR] = 0.0
            s[E_N] = 1.0
            score[i] = 0.0
            continue
        d = x - s[E_MEAN]
        z = 0.0
        if s[E_N] >= warmup:
            sd = math.sqrt(s[E_VAR])
            if sd > 0.0:
                z = abs(d) / sd
            elif d != 0.0:
                z = math.inf
        score[i] = z
        s[E_MEAN] += alpha * d
        s[E_VAR] = (1.0 - alpha) * (s[E_VAR] + alpha * d * d)
        s[E_N] += 1.0
