"""The systemd unit: shipped file == generated, exposure score <= 2.0, and Numba under its syscall filter.

systemd is not PID 1 on the test machines (``systemd-run`` cannot start a
transient unit there), so the system-call filter is shown with an equivalent
seccomp filter applied by libseccomp (through ctypes) in a child process: the
allow-list is what ``systemd-analyze syscall-filter`` says @system-service
holds, minus @privileged and @resources, native architecture only, and every
other system call fails with EPERM, as ``SystemCallErrorNumber=EPERM`` makes it
in the unit. The child then runs the whole daemon (``edge-gateway run``) with
an empty Numba cache, so the kernels are compiled and run under the filter.
"""

from __future__ import annotations

import ctypes.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_gateway import cmd_service
from ops_support import cli, status_json, write_config
from support import REPO, wait_for

UNIT = REPO / "configs" / "edge-gateway.service"


def test_shipped_unit_is_the_generated_one_and_has_the_required_settings():
    text = UNIT.read_text()
    assert text == cmd_service.render(), "regenerate configs/edge-gateway.service from cmd_service.render()"
    lines = set(text.splitlines())
    for needed in ("Type=notify", "WatchdogSec=30", "Restart=on-failure", "User=edge-gateway",
                   "SupplementaryGroups=dialout", "StateDirectory=edge-gateway", "ProtectSystem=strict",
                   "DeviceAllow=char-ttyUSB rw", "DeviceAllow=char-ttyACM rw", "DeviceAllow=char-ttyAMA rw",
                   "NoNewPrivileges=yes", "CapabilityBoundingSet=", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                   "SystemCallFilter=@system-service", "SystemCallFilter=~@privileged @resources",
                   "SystemCallErrorNumber=EPERM", "SystemCallArchitectures=native", "UMask=0077",
                   "StandardOutput=journal", "ExecReload=/bin/kill -HUP $MAINPID", "TimeoutStopFailureMode=abort"):
        assert needed in lines, needed
    assert not any(ln.startswith(("MemoryDenyWriteExecute", "IPAddressAllow", "IPAddressDeny", "PrivateDevices"))
                   for ln in lines)
    assert any(ln.startswith("LoadCredential=") for ln in lines)


def test_unit_starts_without_a_credential_file_opens_every_pi_uart_and_keeps_restarting():
    """Review 15 (operations) #1, #2, #3, #4, as the unit's lines (systemd is not PID 1 here)."""
    lines = UNIT.read_text().splitlines()
    # #1: without the file, LoadCredential= alone fails the start (243/CREDENTIALS); SetCredential= is the default
    assert "LoadCredential=broker-secrets:/etc/edge-gateway/credentials/broker-secrets" in lines
    assert "SetCredential=broker-secrets:# /etc/edge-gateway/credentials/broker-secrets is missing" in lines
    # #2: the Pi's mini UART (ttyS0), SC16IS7xx RS-485 HATs, and cdc_acm loaded before the groups are resolved
    assert [ln for ln in lines if ln.startswith("DeviceAllow=")] == [
        "DeviceAllow=char-ttyUSB rw", "DeviceAllow=char-ttyACM rw", "DeviceAllow=char-ttyAMA rw",
        "DeviceAllow=char-ttyS rw", "DeviceAllow=char-ttySC rw"]
    assert "Wants=network-online.target modprobe@usbserial.service modprobe@cdc_acm.service" in lines
    assert "After=network-online.target time-sync.target modprobe@usbserial.service modprobe@cdc_acm.service" in lines
    # #3: the state dir comes from the config, as it does for status/doctor/reload run from a shell
    assert not any("EG_STATE_DIR" in ln for ln in lines)
    # #4: an invalid config (exit 2) is not retried; any other failure is, every 10 s, for ever
    unit = [ln for ln in lines if not ln.startswith("#")]
    assert [ln for ln in unit if ln.startswith(("Restart", "StartLimit"))] == [
        "StartLimitIntervalSec=0", "Restart=on-failure", "RestartSec=10", "RestartPreventExitStatus=2"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_has_no_setting_systemd_ignores(tmp_path):
    """``systemd-analyze verify`` (systemd 252 here) says nothing: e.g. an empty SetCredential= value would be
    "Invalid syntax, ignoring" and the credential fallback of #1 would not exist."""
    unit = tmp_path / cmd_service.UNIT_NAME
    unit.write_text(cmd_service.render(exec_path=shutil.which("true")))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_service_install_writes_the_unit(tmp_path):
    r = cli("service", "install", "--unit-dir", tmp_path, "--config", "/etc/eg/site.yaml", "--user", "eg",
            "--exec", "/opt/eg/bin/edge-gateway", "--force")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ("edge-gateway: warning: /etc/eg/site.yaml: cannot read: [Errno 2] No such file or directory: "
                        "'/etc/eg/site.yaml' (loaded as the service will load it, it would exit 2) "
                        "(--force: installed anyway)\n")
    text = (tmp_path / "edge-gateway.service").read_text()
    assert "ExecStart=/opt/eg/bin/edge-gateway run /etc/eg/site.yaml" in text
    assert "User=eg\n" in text and "Group=eg\n" in text
    assert oct((tmp_path / "edge-gateway.service").stat().st_mode & 0o777) == "0o644"
    r = cli("service", "install", "--stdout")
    assert r.returncode == 0 and r.stdout.startswith("# edge-gateway")
    assert cli("service", "--help").returncode == 0


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_exposure_score_is_ok(tmp_path):
    probe = subprocess.run(["systemd-analyze", "security", "--help"], capture_output=True, text=True)
    if "--offline" not in probe.stdout:
        pytest.skip("this systemd-analyze has no --offline (needs systemd 250+)")
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(UNIT)], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Overall exposure level for edge-gateway\.service: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout[-2000:] + r.stderr
    score, verdict = float(m.group(1)), m.group(2)
    print(f"systemd-analyze security --offline=yes: {score} {verdict}")
    assert score <= 2.0 and verdict == "OK", r.stdout


# --- the system-call filter -------------------------------------------------------------------

def _expand(group: str) -> set[str]:
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True,
                         check=True).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        t = line.strip()
        if t and not t.startswith("#"):
            names |= _expand(t) if t.startswith("@") else {t}
    return names


WRAPPER = textwrap.dedent("""\
    import ctypes, os, sys
    allowed = open(sys.argv[1]).read().split()
    lib = ctypes.CDLL(sys.argv[2], use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    SCMP_ACT_ALLOW, SCMP_ACT_ERRNO_EPERM = 0x7FFF0000, 0x00050000 | 1
    ctx = lib.seccomp_init(SCMP_ACT_ERRNO_EPERM)   # SystemCallErrorNumber=EPERM; native arch only
    for name in allowed:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr >= 0:
            assert lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) == 0, name
    assert lib.seccomp_load(ctx) == 0, "seccomp_load failed"   # sets no_new_privs, as NoNewPrivileges=yes
    try:
        os.sched_setaffinity(0, {0})          # @resources: must now fail
        sys.exit("filter not in force: sched_setaffinity worked")
    except PermissionError:
        print("filter in force: sched_setaffinity -> EPERM", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "edge_gateway", *sys.argv[3:]])
    """)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze lists the syscall groups")
def test_daemon_and_numba_kernels_run_under_the_units_syscall_filter(tmp_path):
    lib = ctypes.util.find_library("seccomp")
    if not lib:
        pytest.skip("libseccomp is not installed (apt-get install libseccomp2)")
    allowed = _expand("@system-service") - _expand("@privileged") - _expand("@resources")
    assert "execve" in allowed and "mbind" not in allowed and "setrlimit" not in allowed
    (tmp_path / "allowed.txt").write_text("\n".join(sorted(allowed)))
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    cfg = write_config(tmp_path)
    log = tmp_path / "gw.log"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "fresh-numba-cache"), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(tmp_path / "wrapper.py"), str(tmp_path / "allowed.txt"), lib,
                                 "run", str(cfg)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "running:" in log.read_text() or proc.poll() is not None, 120, 0.1, "daemon running")
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert "filter in force" in text and "kernels ready" in text
        s = status_json(tmp_path / "state" / "control.sock")
        assert s["gateway"] == "ops-gw" and s["pid"] == proc.pid
        assert any((tmp_path / "fresh-numba-cache").rglob("*.nbi")), "kernels were compiled under the filter"
    finally:
        if proc.poll() is None:
            proc.terminate()
        rc = proc.wait(30)
    assert rc == 0, log.read_text()


def test_service_install_quotes_paths_and_finds_the_venvs_executable(tmp_path):
    r = cli("service", "install", "--stdout", "--config", "/etc/eg/my site/100%.yaml", "--exec", "/opt/eg/bin/edge-gateway")
    assert r.returncode == 0, r.stderr
    assert 'ExecStart=/opt/eg/bin/edge-gateway run "/etc/eg/my site/100%%.yaml"\n' in r.stdout
    r = cli("service", "install", "--stdout", "--user", "eg x")
    assert r.returncode == 2 and "--user 'eg x'" in r.stderr and "Traceback" not in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    r = subprocess.run([sys.executable, "-m", "edge_gateway", "service", "install", "--stdout"], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env={**env, "PATH": "/usr/bin:/bin"})
    beside = Path(sys.executable).parent / "edge-gateway"
    assert r.returncode == 0, r.stderr
    assert f"ExecStart={os.path.abspath(beside)} run /etc/edge-gateway/gateway.yaml\n" in r.stdout


def test_documentation_points_at_the_operations_doc_the_install_puts_under_its_prefix(tmp_path, monkeypatch):
    """Review 15 walkthrough #10: setup.cfg installs docs/operations.md as PREFIX/share/doc/edge-gateway/operations.md,
    and the unit's Documentation= is that file of the install that holds the executable (a link is followed)."""
    from setuptools.dist import Distribution

    monkeypatch.chdir(REPO)  # setup.cfg's paths are relative to the project
    dist = Distribution()
    dist.parse_config_files(["setup.cfg"])
    assert dist.data_files == [("share/doc/edge-gateway", ["docs/operations.md"])]
    lines = UNIT.read_text().splitlines()
    assert "Documentation=file:/usr/local/share/doc/edge-gateway/operations.md" in lines  # --exec /usr/local/bin/...
    unit = cmd_service.render("/opt/edge gateway/bin/edge-gateway")
    assert "Documentation=file:/opt/edge%%20gateway/share/doc/edge-gateway/operations.md" in unit.splitlines()
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "edge-gateway").write_text("#!/bin/sh\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "edge-gateway").symlink_to(venv / "bin" / "edge-gateway")
    doc = venv / "share" / "doc" / "edge-gateway" / "operations.md"
    doc.parent.mkdir(parents=True)
    doc.write_text("# operations\n")
    r = cli("service", "install", "--stdout", "--exec", tmp_path / "bin" / "edge-gateway")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"ExecStart={tmp_path}/bin/edge-gateway run /etc/edge-gateway/gateway.yaml" in lines
    assert [ln for ln in lines if ln.startswith("Documentation=")] == [f"Documentation=file:{doc}"]


def test_documentation_is_left_out_when_the_install_has_no_doc(tmp_path):
    """An install without the data file (another venv, or a prefix that lost it): no Documentation= line rather
    than one naming a file that does not exist."""
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    exe = tmp_path / "venv" / "bin" / "edge-gateway"
    exe.write_text("#!/bin/sh\n")
    r = cli("service", "install", "--stdout", "--exec", exe)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[6:9] == ["[Unit]", "Description=edge-gateway street-cabinet IoT gateway",
                           "# ttyUSB and ttyACM come from modules: DeviceAllow= only resolves groups that exist when "
                           "the unit starts."]
    assert not [ln for ln in lines if ln.startswith("Documentation")]
    assert r.stdout == cmd_service.render(str(exe), doc="")
    assert cmd_service.render(str(exe), doc="") == cmd_service.render(str(exe)).replace(
        f"Documentation=file:{tmp_path}/venv/share/doc/edge-gateway/operations.md\n", "")


def test_documentation_of_an_editable_install_is_the_source_trees(tmp_path, monkeypatch):
    """``pip install -e .`` (what ``make`` does) installs no data files: the doc is the source tree's, found from
    where the package is imported from; a copy in site-packages has none there."""
    beside = Path(sys.executable).parent / "edge-gateway"  # this Python's own executable
    installed = Path(cmd_service.doc_path(os.path.realpath(beside)))
    expected = installed if installed.is_file() else REPO / "docs" / "operations.md"
    r = cli("service", "install", "--stdout", "--exec", beside)
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("Documentation=")] == [
        f"Documentation=file:{expected}"]

    site = tmp_path / "lib" / "site-packages"
    src = tmp_path / "src"
    for top in (site, src):
        (top / "edge_gateway").mkdir(parents=True)
        (top / "edge_gateway" / "cmd_service.py").write_text("")
        (top / "docs").mkdir()
    (site / "docs" / "operations.md").write_text("# not ours\n")
    monkeypatch.setattr(cmd_service.sysconfig, "get_paths", lambda: {"purelib": str(site), "platlib": str(site)})
    monkeypatch.setattr(cmd_service, "__file__", str(site / "edge_gateway" / "cmd_service.py"))
    assert cmd_service.source_doc() is None  # an installed copy: its doc is under the prefix
    monkeypatch.setattr(cmd_service, "__file__", str(src / "edge_gateway" / "cmd_service.py"))
    assert cmd_service.source_doc() is None  # a source tree without the doc
    (src / "docs" / "operations.md").write_text("# operations\n")
    assert cmd_service.source_doc() == str(src / "docs" / "operations.md")
    other = tmp_path / "other" / "bin" / "edge-gateway"  # another install's executable: not this source tree's doc
    assert cmd_service.find_doc(str(other)) is None
    if not installed.is_file():  # this Python's executable, whose prefix has no doc: the (patched) source tree's
        assert cmd_service.find_doc(str(beside)) == str(src / "docs" / "operations.md")


def test_the_unit_leaves_proc_cpuinfo_readable_for_llvm():
    """On ARM, LLVM reads the host CPU's model and features from /proc/cpuinfo; ProcSubset=pid hides it and
    Numba would compile every kernel for a generic ARMv8 (review 15 ops, unconfirmed list)."""
    unit = cmd_service.render()
    assert not [ln for ln in unit.splitlines() if ln.startswith("ProcSubset=")]
    assert "ProtectProc=invisible" in unit  # other processes stay hidden
