"""The CLI builds only the named command's parser; the table of commands must match the modules."""

import subprocess
import sys

from edge_gateway import cli
from support import REPO


def _choices(parser) -> set[str]:
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_command_table_matches_what_the_modules_add():
    assert _choices(cli.build_parser()) == set(cli._COMMANDS)


def test_a_named_command_builds_its_own_module_only():
    assert _choices(cli.build_parser(["run", "x.yaml"])) == {"run"}
    assert _choices(cli.build_parser(["evaluate", "d", "w.json"])) == {"analyze", "evaluate"}
    assert _choices(cli.build_parser(["--version"])) == set(cli._COMMANDS)
    assert _choices(cli.build_parser(["nosuch"])) == set(cli._COMMANDS)


def test_run_does_not_import_the_other_commands():
    code = ("import sys; from edge_gateway import cli; cli.build_parser(['run', 'x.yaml']);"
            "print(sorted(m for m in sys.modules if m.startswith('edge_gateway.cmd_') or m == 'edge_gateway.offline'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['edge_gateway.cmd_run']"


def test_every_help_works_without_docstrings():
    """The service runs with PYTHONOPTIMIZE=2; a technician may export it too."""
    for command in sorted(set(cli._COMMANDS)):
        r = subprocess.run([sys.executable, "-OO", "-m", "edge_gateway", command, "--help"], cwd=REPO,
                           capture_output=True, text=True)
        assert r.returncode == 0, (command, r.stderr)
        assert f"usage: edge-gateway {command}" in r.stdout


def test_run_on_a_state_dir_it_may_not_create_says_so_in_one_line(tmp_path):
    """Review 15 (operations) #6: a state dir outside what the unit may write was a PermissionError traceback
    (exit 1, restarted by systemd). Now one line naming the key and the folder, exit 2."""
    state = "/sys/kernel/edge-gateway-state"  # refused even to root, as ProtectSystem=strict refuses the service
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"gateway: {{id: t1, state_dir: {state}}}\n")
    out = subprocess.run([sys.executable, "-m", "edge_gateway", "run", str(cfg)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and out.stderr == (
        f"edge-gateway: gateway.state_dir: cannot use {state}: Operation not permitted"
        " (under the service unit only /var/lib/edge-gateway is writable)\n")


def test_doctor_help_lists_every_check_without_markup():
    """Its description was the first paragraph of the docstring only: the list of checks was cut off
    (review 17 walkthrough #12)."""
    r = subprocess.run([sys.executable, "-m", "edge_gateway", "doctor", "--help"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0
    for check in ("config", "user", "serial", "state dir", "broker", "clock", "daemon"):
        assert f"\n* {check}: " in r.stdout, check
    assert "``" not in r.stdout and "Exit statuses: 0 no check failed" in r.stdout


def test_status_never_shows_minus_zero(capsys):
    from edge_gateway.cmd_status import render

    render({"gateway": "gw", "sensors": {"traffic-1": {"driver": "coap", "last_values": {
        "vehicles": {"value": -0.0, "unit": "1/min"}}}}})
    out = capsys.readouterr().out
    assert "vehicles=0 1/min" in out and "-0" not in out
