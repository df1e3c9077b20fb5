"""``service install`` refuses a setup the unit cannot run, and never silently replaces a changed unit.

Review 15 (operations) #3, #7, #8. The configs live in a folder the unit does not hide (/dev/shm),
since pytest's own tmp folders are under /tmp, which ``PrivateTmp=yes`` hides from the service.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from ops_support import cli

from edge_gateway import cmd_service

EXE = "/opt/eg/bin/edge-gateway"
SERVICE_STATE = "state_dir: /var/lib/edge-gateway"


@pytest.fixture
def visible():
    """A folder outside /home, /root, /run/user, /tmp and /var/tmp, as the service would see it."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    top = Path(tempfile.mkdtemp(prefix="eg-install-", dir="/dev/shm"))
    yield top
    shutil.rmtree(top)


def _config(folder: Path, state: str = SERVICE_STATE, name: str = "gw.yaml") -> Path:
    cfg = folder / name
    cfg.write_text(f"gateway:\n  id: cab-1\n  {state}\n")
    return cfg


def _install(unit_dir: Path, cfg: Path, *extra, exe: str = EXE, env: dict | None = None):
    r = cli("service", "install", "--unit-dir", unit_dir, "--config", cfg, "--exec", exe, *extra, env=env)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_install_refuses_paths_that_protecthome_and_privatetmp_hide(visible, tmp_path):
    """#7: an executable, venv or config under /home, /root, /run/user or /tmp: the service cannot see it."""
    cfg = _config(visible)
    units = visible / "units"
    r = _install(units, cfg, exe="/home/pi/edge-gateway/.venv/bin/edge-gateway")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (
        "edge-gateway: executable /home/pi/edge-gateway/.venv/bin/edge-gateway is under /home, which the unit's "
        "ProtectHome=yes hides from the service: install into e.g. /opt/edge-gateway (python3 -m venv "
        "/opt/edge-gateway) and give --exec /opt/edge-gateway/bin/edge-gateway (or --force)\n")
    assert not units.exists()

    script = visible / "edge-gateway"  # a console script whose venv is in /root
    script.write_text("#!/root/eg-venv/bin/python\nimport sys\n")
    script.chmod(0o755)
    in_tmp = _config(tmp_path)
    link = visible / "linked.yaml"
    link.symlink_to(in_tmp)
    r = _install(units, link, exe=str(script))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "edge-gateway: the executable's Python (its venv) /root/eg-venv/bin/python is under /root, which the unit's "
        "ProtectHome=yes hides from the service: install into e.g. /opt/edge-gateway (python3 -m venv "
        "/opt/edge-gateway) and give --exec /opt/edge-gateway/bin/edge-gateway (or --force)",
        f"edge-gateway: config {link} -> {in_tmp} is under /tmp, which the unit's PrivateTmp=yes hides from the "
        f"service: put it in /etc/edge-gateway/ (or --force)"]
    assert not units.exists()

    r = _install(units, in_tmp, "--force")
    assert r.returncode == 0, r.stderr
    assert r.stderr == (f"edge-gateway: warning: config {in_tmp} is under /tmp, which the unit's PrivateTmp=yes hides "
                        f"from the service: put it in /etc/edge-gateway/ (--force: installed anyway)\n")
    assert r.stdout.startswith(f"wrote {units / cmd_service.UNIT_NAME}\n")


def test_install_loads_the_config_as_the_service_will_and_wants_its_state_dir(visible):
    """#3: the unit sets no EG_STATE_DIR, so a config relying on it would use another folder than status/doctor."""
    units = visible / "units"
    demo_like = _config(visible, "state_dir: ${EG_STATE_DIR:-../run/state}", "demo-like.yaml")
    r = _install(units, demo_like, env={"EG_STATE_DIR": "/var/lib/edge-gateway"})  # set in the shell only
    assert r.returncode == 2 and r.stdout == "" and not units.exists()
    assert r.stderr == (
        f"edge-gateway: {demo_like}: gateway.state_dir is {visible.parent}/run/state for the service; it must be "
        f"/var/lib/edge-gateway, the unit's StateDirectory= (the only folder the service may write, and where "
        f"status, reload and doctor look) (or --force)\n")

    missing = visible / "nope.yaml"
    r = _install(units, missing)
    assert r.returncode == 2 and not units.exists()
    assert r.stderr == (f"edge-gateway: {missing}: cannot read: [Errno 2] No such file or directory: '{missing}' "
                        f"(loaded as the service will load it, it would exit 2) (or --force)\n")

    several = _config(visible, "batch_interval_s: -1\nbroker: {port: 99999}", "several.yaml")
    r = _install(units, several)
    assert r.returncode == 2 and not units.exists()
    assert r.stderr.splitlines() == [  # one line a mistake, as validate prints them
        f"edge-gateway: {several}:3:21: gateway.batch_interval_s: must be positive (or --force)",
        f"edge-gateway: {several}:4:16: broker.port: 99999 is not a TCP port (loaded as the service will load it, "
        "it would exit 2) (or --force)"]

    # systemd gives the service STATE_DIRECTORY and CREDENTIALS_DIRECTORY: a config may use them
    from_unit = _config(visible, "state_dir: ${STATE_DIRECTORY}", "from-unit.yaml")
    r = _install(units, from_unit, env={"STATE_DIRECTORY": "", "EG_STATE_DIR": ""})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert f"ExecStart={EXE} run {from_unit}\n" in (units / cmd_service.UNIT_NAME).read_text()
    assert "EG_STATE_DIR" not in (units / cmd_service.UNIT_NAME).read_text()


def test_install_never_silently_replaces_a_changed_unit(visible):
    """#8: the same unit again is "unchanged"; a changed one is refused with a diff, or kept as .bak with --force."""
    cfg = _config(visible)
    units = visible / "units"
    target = units / cmd_service.UNIT_NAME
    r = _install(units, cfg)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == [f"wrote {target}", "next:",
                         "  useradd --system --no-create-home --shell /usr/sbin/nologin --groups dialout edge-gateway"]
    assert lines[3:7] == [  # #1: the credential, only for a broker with a password
        "  install -d -m 0700 /etc/edge-gateway/credentials",
        "  # only if the broker needs a password: 'username: ...' and 'password: ...' lines in",
        "  #   /etc/edge-gateway/credentials/broker-secrets (chmod 600), and in the config",
        "  #   broker.secrets_file: ${CREDENTIALS_DIRECTORY:-/etc/edge-gateway/credentials}/broker-secrets"]
    written = target.read_text()

    r = _install(units, cfg)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{target} unchanged\n", "")

    edited = written.replace("WatchdogSec=30\n", "WatchdogSec=120\n").replace(
        "DeviceAllow=char-ttySC rw\n", "DeviceAllow=char-ttySC rw\nDeviceAllow=char-ttyXRUSB rw\n")
    target.write_text(edited)
    r = _install(units, cfg)
    assert r.returncode == 2 and r.stdout == ""
    assert target.read_text() == edited and not target.with_name(target.name + ".bak").exists()
    n = written.splitlines().index("WatchdogSec=30") + 1
    m = edited.splitlines().index("DeviceAllow=char-ttyXRUSB rw") + 1
    assert r.stderr.splitlines() == [
        f"edge-gateway: {target} differs from the unit this version writes: not replaced; put local changes in a "
        f"drop-in with `systemctl edit edge-gateway`, or give --force to replace it (the old file is kept as "
        f"edge-gateway.service.bak)",
        f"--- {target}", "+++ new",
        f"@@ -{n} +{n} @@", "-WatchdogSec=120", "+WatchdogSec=30",
        f"@@ -{m} +{m - 1},0 @@", "-DeviceAllow=char-ttyXRUSB rw"]

    r = _install(units, cfg, "--force")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(f"wrote {target} (the old one is edge-gateway.service.bak)\n")
    assert target.read_text() == written
    assert target.with_name(target.name + ".bak").read_text() == edited


def test_stdout_prints_the_unit_and_warns_of_what_install_would_refuse(visible):
    """A technician who previews with --stdout and pastes the unit by hand is told what `install` would refuse
    it for (same checks, same wording, as warnings on stderr); the unit itself is still on stdout, exit 0."""
    units = visible / "units"
    cfg = _config(visible)
    r = _install(units, cfg, "--force")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    written = (units / cmd_service.UNIT_NAME).read_text()
    r = cli("service", "install", "--stdout", "--config", cfg, "--exec", EXE)
    assert (r.returncode, r.stdout, r.stderr) == (0, written, "")  # nothing to say: no warnings

    home_exe = "/home/pi/edge-gateway/.venv/bin/edge-gateway"
    wrong_state = _config(visible, "state_dir: /srv/eg", "wrong-state.yaml")
    r = cli("service", "install", "--stdout", "--config", wrong_state, "--exec", home_exe)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert r.stdout == cmd_service.render(home_exe, str(wrong_state), doc="")
    assert r.stderr.splitlines() == [
        f"edge-gateway: warning: executable {home_exe} is under /home, which the unit's ProtectHome=yes hides from "
        "the service: install into e.g. /opt/edge-gateway (python3 -m venv /opt/edge-gateway) and give "
        "--exec /opt/edge-gateway/bin/edge-gateway (install refuses this unit unless --force)",
        f"edge-gateway: warning: {wrong_state}: gateway.state_dir is /srv/eg for the service; it must be "
        "/var/lib/edge-gateway, the unit's StateDirectory= (the only folder the service may write, and where "
        "status, reload and doctor look) (install refuses this unit unless --force)"]
    assert [p.name for p in units.iterdir()] == [cmd_service.UNIT_NAME]  # --stdout writes nothing

    r = _install(units, wrong_state, exe=home_exe)  # the same problems, as install says them
    assert r.returncode == 2 and [ln.replace(" (or --force)", "") for ln in r.stderr.splitlines()] == [
        ln.replace("warning: ", "").replace(" (install refuses this unit unless --force)", "")
        for ln in cli("service", "install", "--stdout", "--config", wrong_state, "--exec", home_exe).stderr.splitlines()]
