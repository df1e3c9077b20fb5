"""How the detectors are combined into one score per reading, and turned into events.

Design (the kernels themselves live in :mod:`.detectors`, one module, so that
Numba's per-file cache can never serve a fused kernel compiled against an old
helper):

* **Combined score** = weighted maximum of the detector scores, so it stays in
  [0, 1] and names one dominant detector. With the NAB-tuned defaults only the
  ``novelty`` detector has weight: it fires once, early, on the first reading
  (or short-term feature) outside anything the channel has shown so far, then
  mutes the channel for a while (see :func:`.detectors.novelty_step`). This is
  the score written by ``edge-gateway analyze`` and scored against NAB.
* **Guards** = ``range`` (hard ``range_lo``/``range_hi`` limits), ``flatline``
  (stuck sensor) and ``dropout`` (timestamp gap). A live gateway needs them even
  though NAB does not reward them, so they always run and open an *event* on
  their own score (``guard_level``), whatever their weight in the combined score.
* ``ewma``, ``robust``, ``rate`` and ``cusum`` remain available (``--detector``,
  ``DetectorSettings.only``, or a weight > 0); at weight 0 the fused pass skips
  them entirely.
* **Events**: hysteresis per channel, opened by the combined score at
  ``event_threshold`` or by a guard, closed after ``event_close_after`` quiet
  readings; all inside the same pass, written to a small row buffer.

:func:`detect` takes its tunables in one float64 vector laid out by the ``P_*``
indices (:meth:`edge_gateway.analytics.chain.DetectorSettings.params` builds it).
"""

from __future__ import annotations

import numpy as np

from ._jit import kernel
from .detectors import (  # noqa: F401  (re-exported: the ensemble's public surface)
    D_NOV,
    DETECTOR_NAMES,
    E_BELOW,
    E_DOM,
    E_END,
    E_OPEN,
    E_PEAK,
    E_PEAK_VAL,
    E_START,
    EVENT_FIELDS,
    EVENT_WIDTH,
    GUARDS,
    N_DETECTORS,
    N_PARAMS,
    P_EVENT_CLOSE,
    P_EVENT_THRESHOLD,
    P_GUARD_LEVEL,
    P_W0,
    detect,
    events_update,
)


def new_event_state(n_channels: int) -> np.ndarray:
    return np.zeros((n_channels, EVENT_WIDTH), dtype=np.float64)


@kernel
def combine(scores, weights, out, dominant):
    """Weighted max over detector columns per row; ``dominant`` is its column (-1 when all are 0).

    The rule :func:`detect` applies inline; kept for offline use on per-detector columns.
    """
    for i in range(scores.shape[0]):
        best = 0.0
        arg = -1
        for j in range(scores.shape[1]):
            v = weights[j] * scores[i, j]
            if v > best:
                best = v
                arg = j
        out[i] = best
        dominant[i] = arg
