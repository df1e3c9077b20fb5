"""The cost of making room at a sensor's channel cap, and of a detector group tuned apart.

Prints one JSON object: ``Pipeline.forget_idle`` at 4,096 channels with 8 forgotten (it runs on the event
loop, at most once a minute while a sensor refuses), best and median of 5, and the detector table bytes of
each group (a group tuned apart holds rows for its own channels only).

    .venv/bin/python bench/channel_room.py
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repo, not bench/ (bench/drivers.py)
from edge_gateway import config, messages
from edge_gateway.batcher import Batch, Batcher
from edge_gateway.pipeline import Pipeline

T0 = 1_750_000_000.0


def main() -> None:
    cfg = config.loads("""
    gateway: {id: gw}
    windows: {seconds: 10, grace_s: 2}
    sensors:
      - {id: s, driver: serial_line, options: {port: /dev/null}}
      - {id: t, driver: serial_line, options: {port: /dev/null}}
    detector: {sensors: {t: {threshold: 0.9}}}
    """)
    times = []
    for rep in range(5):
        b = Batcher(max_channels_per_sensor=4096)
        p = Pipeline(cfg, messages.Topics("c", "gw"), b, wall_clock=lambda: T0 + 1e6)
        chans = [b.index_of("s", f"c{i}") for i in range(4095)] + [b.index_of("t", "x")]
        n = len(chans)
        for k in range(30):
            c = np.array(chans, dtype=np.int64)
            p.process(Batch(c, np.full(n, T0 + k), np.random.default_rng(k).normal(size=n)), now=float(k))
        live = np.array(chans[8:], dtype=np.int64)
        for k in range(30, 60):  # the first 8 fall silent
            p.process(Batch(live, np.full(live.size, T0 + k), np.random.default_rng(k).normal(size=live.size)), now=float(k))
        t0 = time.perf_counter()
        gone = p.forget_idle({"s"}, now=3700.0, idle_s=3600.0)
        times.append(time.perf_counter() - t0)
        assert len(gone) == 8, len(gone)
    tables = {i: sum(a.nbytes for a in d._state.values()) for i, d in enumerate(p.detectors.detectors)}
    print(json.dumps({"forget_idle_ms_best": round(min(times) * 1e3, 1), "forget_idle_ms_median": round(sorted(times)[2] * 1e3, 1),
           "detector_table_bytes_by_group": tables}))


if __name__ == "__main__":
    main()
