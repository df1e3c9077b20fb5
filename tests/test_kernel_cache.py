"""The Numba cache lives in a folder per code version; older versions' folders are removed."""

from __future__ import annotations

import os
import subprocess
import sys

from edge_gateway import config, kernel_cache
from support import REPO


def test_the_cache_folder_follows_the_code_and_old_ones_go(tmp_path):
    root = tmp_path / "numba-cache"
    stale = root / "0123456789abcdef"
    stale.mkdir(parents=True)
    (stale / "detectors.detect_spec-1.py311.nbi").write_bytes(b"old")
    other = root / "notes"  # not a tag folder: not ours to delete
    other.mkdir()
    d = kernel_cache.cache_dir(root)
    assert d == root / kernel_cache.code_tag() and len(d.name) == 16
    assert stale.exists() and not d.exists(), "naming the folder creates and deletes nothing"
    d.mkdir()
    kernel_cache.prune(root)
    assert not stale.exists() and other.exists() and d.exists()
    assert kernel_cache.cache_dir(root) == d  # stable while the code is


def test_the_tag_changes_with_any_analytics_source(tmp_path, monkeypatch):
    before = kernel_cache.code_tag()
    fake = tmp_path / "edge_gateway"
    (fake / "analytics").mkdir(parents=True)
    for src in (REPO / "edge_gateway" / "analytics").glob("*.py"):
        (fake / "analytics" / src.name).write_bytes(src.read_bytes())
    monkeypatch.setattr(kernel_cache, "__file__", str(fake / "kernel_cache.py"))
    assert kernel_cache.code_tag() == before
    (fake / "analytics" / "filters.py").write_bytes((fake / "analytics" / "filters.py").read_bytes() + b"\n")
    assert kernel_cache.code_tag() != before


def test_the_daemon_points_numba_there_before_importing_it(tmp_path):
    cfg = tmp_path / "gw.yaml"
    # detector.params, as both example configs have: validating them must not import Numba (review 15 walk #1)
    cfg.write_text("gateway: {id: c1, state_dir: st}\ndetector: {params: {flat_min_run: 20}, "
                   "sensors: {}}\n")
    code = ("import os, sys; from edge_gateway import config, daemon; "
            f"daemon.prepare_environment(config.load({str(cfg)!r})); "
            "print(os.environ['NUMBA_CACHE_DIR']); print('numba' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    where, imported = out.stdout.split()
    assert where == str(tmp_path / "st" / "numba-cache" / kernel_cache.code_tag()) and imported == "False"
    assert config.load(cfg).state_dir == tmp_path / "st"
