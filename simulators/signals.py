"""Deterministic sensor signals: baseline, daily cycle and noise, from a seed.

Sample ``k`` of a channel depends only on (seed, channel, k), so a test can
recompute exactly what a simulator wrote without reading its output.

The noise comes in blocks of :data:`NOISE_BLOCK` samples: block ``b`` is drawn
from ``PCG64([seed, crc32(name), b])`` (block 0 from ``PCG64([seed,
crc32(name)])``, the stream earlier versions drew every sample from, so the
first ``NOISE_BLOCK`` samples of a channel are unchanged). Sample ``k`` thus
costs the same at any ``k``: one block, cached, instead of ``k`` draws.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import numpy as np

NOISE_BLOCK = 1 << 17  # samples per noise block: 36 h at 1 Hz, 1 MB per cached block


@dataclass(frozen=True)
class ChannelSignal:
    name: str
    baseline: float
    amplitude: float = 0.0
    period_s: float = 86400.0
    noise: float = 0.0
    decimals: int = 1
    minimum: float = -math.inf  # a count or a fill level never goes below 0, whatever the noise draws


@functools.lru_cache(maxsize=32)
def _noise_block(seed: int, key: int, block: int) -> np.ndarray:
    """Standard normal noise of samples ``block*NOISE_BLOCK ..`` of one channel (read-only)."""
    entropy = [seed, key] if block == 0 else [seed, key, block]
    out = np.random.Generator(np.random.PCG64(entropy)).normal(0.0, 1.0, NOISE_BLOCK)
    out.setflags(write=False)
    return out


def noise(seed: int, name: str, count: int, start: int = 0) -> np.ndarray:
    """Standard normal noise of samples ``start .. start+count-1`` of channel ``name``."""
    if start < 0 or count < 0:
        raise ValueError("start and count must be >= 0")
    key = zlib.crc32(name.encode())
    out = np.empty(count)
    k, end = start, start + count
    while k < end:
        b, i = divmod(k, NOISE_BLOCK)
        n = min(NOISE_BLOCK - i, end - k)
        out[k - start:k - start + n] = _noise_block(seed, key, b)[i:i + n]
        k += n
    return out


def channel_values(sig: ChannelSignal, seed: int, t0: float, interval_s: float, count: int,
                   start: int = 0) -> np.ndarray:
    """Values of samples ``start .. start+count-1``, rounded to the channel's decimals."""
    k = np.arange(start, start + count, dtype=np.float64)
    t = t0 + k * interval_s
    cycle = sig.amplitude * np.sin(2.0 * math.pi * (t % sig.period_s) / sig.period_s)
    return floor_at(np.round(sig.baseline + cycle + noise(seed, sig.name, count, start) * sig.noise, sig.decimals),
                    sig.minimum)


def floor_at(values: np.ndarray, minimum: float) -> np.ndarray:
    """``values`` raised to ``minimum`` where below it (a rounded -0.0 becomes 0.0 there too)."""
    if minimum == -math.inf:
        return values
    return np.maximum(values, minimum) + 0.0
