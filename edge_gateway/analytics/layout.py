"""The layout of the detector state tables and parameter vector: plain constants, no kernel.

Shared by the kernels (:mod:`.detectors`) and the settings (:mod:`.settings`); importing it
does not import Numba, so a config can be validated before Numba's cache is placed.
"""

from __future__ import annotations

DETECTOR_NAMES = ("ewma", "robust", "rate", "cusum", "range", "flatline", "dropout", "novelty")
N_DETECTORS = len(DETECTOR_NAMES)
D_EWMA, D_ROBUST, D_RATE, D_CUSUM, D_RANGE, D_FLAT, D_DROP, D_NOV = range(N_DETECTORS)
GUARDS = (D_RANGE, D_FLAT, D_DROP)

# novelty detector: features tracked for "outside the range seen so far"
NOV_FEATURES = ("value", "diff", "short", "season", "vol", "long")
NOV_NF = len(NOV_FEATURES)
NOV_MAX_BINS = 96
(NS_N, NS_PREV, NS_SHORT, NS_HOLD, NS_NR, NS_VOL, NS_LONG, NS_BIN, NS_BIN_LO, NS_BIN_HI, NS_PEAK) = range(11)
NS_F0 = 11
NS_SEAS = NS_F0 + 2 * NOV_NF
NOVELTY_WIDTH = NS_SEAS + 3 * NOV_MAX_BINS

EWMA_WIDTH = 3
ROBUST_WIDTH = 3
RATE_WIDTH = 6
CUSUM_WIDTH = 5
FLAT_WIDTH = 4
DROP_WIDTH = 3
STATE_WIDTHS = {
    "ewma": EWMA_WIDTH,
    "robust": ROBUST_WIDTH,
    "rate": RATE_WIDTH,
    "cusum": CUSUM_WIDTH,
    "flatline": FLAT_WIDTH,
    "dropout": DROP_WIDTH,
    "novelty": NOVELTY_WIDTH,
}

# parameter vector of the fused kernel and of the novelty detector
(
    P_EWMA_ALPHA, P_EWMA_WARMUP, P_EWMA_HALF,
    P_ROB_ETA, P_ROB_CLIP, P_ROB_WARMUP, P_ROB_FLOOR, P_ROB_HALF,
    P_RATE_ETA, P_RATE_CLIP, P_RATE_WARMUP, P_RATE_HALF,
    P_CUSUM_ETA, P_CUSUM_CLIP, P_CUSUM_WARMUP, P_CUSUM_K, P_CUSUM_H,
    P_RANGE_LO, P_RANGE_HI,
    P_FLAT_EPS, P_FLAT_MIN_RUN, P_FLAT_ALPHA,
    P_DROP_K, P_DROP_ETA, P_DROP_CLIP,
    P_NOV_WARMUP, P_NOV_HOLD, P_NOV_LEVEL, P_NOV_HALF, P_NOV_A_SHORT, P_NOV_A_SEASON, P_NOV_BINS,
    P_NOV_SEASON_WARMUP, P_NOV_A_VOL, P_NOV_A_LONG,
    P_NOV_SEASON_NORM, P_NOV_A_SPREAD, P_NOV_SPREAD_FLOOR, P_NOV_BIN_WARMUP, P_NOV_BYPASS,
    P_NOV_DECAY0,
) = range(41)
P_NOV_W0 = P_NOV_DECAY0 + NOV_NF
P_GUARD_LEVEL = P_NOV_W0 + NOV_NF
P_EVENT_THRESHOLD = P_GUARD_LEVEL + 1
P_EVENT_CLOSE = P_EVENT_THRESHOLD + 1
P_W0 = P_EVENT_CLOSE + 1
P_W_NOV = P_W0 + D_NOV
# novelty parameters added later, appended to keep the layout above
P_NOV_LONG_MODE = P_W0 + N_DETECTORS
P_NOV_SEASON_MATURE = P_NOV_LONG_MODE + 1
P_NOV_HALF_SEASON = P_NOV_LONG_MODE + 2
P_NOV_HALF_VOL = P_NOV_LONG_MODE + 3
P_NOV_SEASON_SMOOTH = P_NOV_LONG_MODE + 4
P_NOV_REFRACT_INV = P_NOV_LONG_MODE + 5  # 1 / nov_refract (0: off)
P_NOV_REFRACT_DAMP = P_NOV_LONG_MODE + 6
P_NOV_SEASON_FLOOR = P_NOV_LONG_MODE + 7  # the season residual range always holds [-floor, floor]
P_NOV_SHIFT_FLOOR = P_NOV_LONG_MODE + 8  # the level-shift range always holds +-(this x volatility EWMA)
P_NOV_VOL_SEASON = P_NOV_LONG_MODE + 9  # > 0: the volatility EWMA's step, if smaller, less the day profile's step
P_NOV_VALUE_GATE = P_NOV_LONG_MODE + 10  # > 0: the value feature's score x min(1, |x - short| / (this x vol))**2
N_PARAMS = P_NOV_LONG_MODE + 11
P_AFTER_NORM = P_NOV_SEASON_NORM + 1

# compile-time switches of detect (``spec``): None compiles a part out, True turns it on with its parameter
# known > 0, a float leaves the test to run time (SPEC_RUNTIME: every part, tested)
(SPEC_NOV0, SPEC_NOV1, SPEC_NOV2, SPEC_NOV3, SPEC_NOV4, SPEC_NOV5, SPEC_NORM, SPEC_RANGE, SPEC_FLAT,
 SPEC_DROP, SPEC_VOL_SEASON, SPEC_VALUE_GATE, SPEC_NOV, SPEC_LONG_MODE, SPEC_MATURE, SPEC_SMOOTH, SPEC_REFRACT,
 SPEC_SHIFT_FLOOR) = range(NOV_NF + 12)
N_SPEC = SPEC_SHIFT_FLOOR + 1
SPEC_RUNTIME = (0.0,) * N_SPEC

EVENT_WIDTH = 7
EVENT_FIELDS = ("channel", "start", "end", "peak_score", "peak_value", "detector")
E_OPEN, E_START, E_END, E_PEAK, E_PEAK_VAL, E_DOM, E_BELOW = range(EVENT_WIDTH)
