"""Signal conditioning: Hampel despiking, one-pole low-pass, deadband reporting.

These feed aggregates and the uplink, not the anomaly detectors: despiking a
series before scoring it would hide exactly the spikes an operator wants to see.
NaN readings pass through unchanged and leave the state untouched.
"""

from __future__ import annotations

import sys

import numpy as np

from ._jit import kernel

MAD_TO_SIGMA = 1.4826
LOWPASS_WIDTH = 2
DEADBAND_WIDTH = 3


def pure_module():
    """This module with every kernel and helper as plain Python (see :mod:`._pure`)."""
    from ._pure import pure_twin

    return pure_twin(sys.modules[__name__])


def new_hampel_state(n_channels: int, window: int) -> np.ndarray:
    """Ring buffer of ``window`` past readings per channel, then [count, next slot]."""
    if window < 1:
        raise ValueError("Hampel window must be >= 1")
    return np.zeros((n_channels, window + 2), dtype=np.float64)


def new_lowpass_state(n_channels: int) -> np.ndarray:
    return np.zeros((n_channels, LOWPASS_WIDTH), dtype=np.float64)


def new_deadband_state(n_channels: int) -> np.ndarray:
    return np.zeros((n_channels, DEADBAND_WIDTH), dtype=np.float64)


@kernel
def _median_sorted(a, n):
    """Median of ``a[:n]``, sorting it in place (insertion sort: windows are small)."""
    for i in range(1, n):
        v = a[i]
        j = i - 1
        while j >= 0 and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v
    h = n // 2
    if n % 2 == 1:
        return a[h]
    return 0.5 * (a[h - 1] + a[h])


@kernel
def hampel(chan, val, n_sigma, state, out, flags):
    """Replace a reading by the median of the channel's last ``window`` readings when it is
    more than ``n_sigma`` scaled MADs away; ``flags`` marks replaced readings.

    The window is trailing (a live stream has no future samples) and stores raw
    readings, so a genuine level shift is accepted once it fills half the window.
    Readings are passed through until the window is full.
    """
    w = state.shape[1] - 2
    scratch = np.empty(w, dtype=np.float64)
    for i in range(chan.shape[0]):
        x = val[i]
        out[i] = x
        flags[i] = False
        if x != x:
            continue
        s = state[chan[i]]
        count = int(s[w])
        if count >= w:
            for j in range(w):
                scratch[j] = s[j]
            med = _median_sorted(scratch, w)
            for j in range(w):
                scratch[j] = abs(s[j] - med)
            mad = MAD_TO_SIGMA * _median_sorted(scratch, w)
            if abs(x - med) > n_sigma * mad:
                out[i] = med
                flags[i] = True
        pos = int(s[w + 1])
        s[pos] = x
        s[w + 1] = (pos + 1) % w
        if count < w:
            s[w] = count + 1


@kernel
def lowpass(chan, val, alpha, state, out):
    """One-pole low-pass (EMA) ``y += alpha * (x - y)``; the first reading initialises y."""
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            out[i] = x
            continue
        s = state[chan[i]]
        if s[1] == 0.0:
            s[0] = x
            s[1] = 1.0
        else:
            s[0] += alpha * (x - s[0])
        out[i] = s[0]


@kernel
def deadband(chan, ts, val, band, heartbeat_s, state, emit):
    """Report by exception: emit when |x - last sent| > ``band`` or ``heartbeat_s`` passed.

    The first reading of a channel is always emitted. State = [last sent, its ts, seen]. A clock
    stepped back by a heartbeat or more also sends (and re-anchors), so it cannot silence a channel.
    """
    for i in range(chan.shape[0]):
        x = val[i]
        if x != x:
            emit[i] = False
            continue
        s = state[chan[i]]
        send = s[2] == 0.0 or abs(x - s[0]) > band or abs(ts[i] - s[1]) >= heartbeat_s
        emit[i] = send
        if send:
            s[0] = x
            s[1] = ts[i]
            s[2] = 1.0
