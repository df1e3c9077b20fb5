"""Deterministic sensor signals: baseline, daily cycle and noise, from a seed.

Sample ``k`` of a channel depends only on (seed, channel, k), so a test can
recompute exactly what a simulator wrote without reading its output.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChannelSignal:
    name: str
    baseline: float
    amplitude: float = 0.0
    period_s: float = 86400.0
    noise: float = 0.0
    decimals: int = 1


def channel_values(sig: ChannelSignal, seed: int, t0: float, interval_s: float, count: int,
                   start: int = 0) -> np.ndarray:
    """Values of samples ``start .. start+count-1``, rounded to the channel's decimals."""
    k = np.arange(start, start + count, dtype=np.float64)
    t = t0 + k * interval_s
    cycle = sig.amplitude * np.sin(2.0 * math.pi * (t % sig.period_s) / sig.period_s)
    rng = np.random.Generator(np.random.PCG64([seed, zlib.crc32(sig.name.encode())]))
    noise = rng.normal(0.0, 1.0, start + count)[start:] * sig.noise
    return np.round(sig.baseline + cycle + noise, sig.decimals)
