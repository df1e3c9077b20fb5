"""``edge-gateway service install``: write the hardened systemd unit (also shipped as configs/edge-gateway.service).

The unit runs ``edge-gateway run CONFIG`` as ``Type=notify`` (READY=1 once the
kernels are warm and the queue is open), with the watchdog pinged from the
event loop every WatchdogSec/2, ``Restart=on-failure``, its own system user
(in ``dialout`` for the serial ports), and a sandbox that
``systemd-analyze security`` rates 1.5 "OK" (see docs/operations.md for each
setting and why ``MemoryDenyWriteExecute`` is not among them: Numba's JIT
writes machine code and then runs it).

Only the state directory (``StateDirectory=edge-gateway``, i.e.
/var/lib/edge-gateway: queue, Numba cache, control socket) is writable. Serial
devices: ``DeviceAllow=char-ttyUSB``, ``char-ttyACM`` and ``char-ttyAMA``
(the Pi's UART). Broker credentials come through ``LoadCredential=`` and are
read from ``$CREDENTIALS_DIRECTORY``; point ``broker.secrets_file`` at
``${CREDENTIALS_DIRECTORY:-/etc/edge-gateway/credentials}/broker-secrets`` (the default is the
credential's source file, so the config also validates from a technician's shell).

Exit statuses: 0 written (or printed with ``--stdout``); 1 cannot write; 2 bad usage.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

UNIT_NAME = "edge-gateway.service"
DEFAULTS = {"exec": "/usr/local/bin/edge-gateway", "config": "/etc/edge-gateway/gateway.yaml",
            "user": "edge-gateway", "watchdog": 30}

TEMPLATE = """\
# edge-gateway: street-cabinet IoT gateway (written by `edge-gateway service install`).
# systemd-analyze security --offline=yes rates this unit 1.5 "OK" (systemd 252).
# Before the first start:
#   useradd --system --no-create-home --shell /usr/sbin/nologin --groups dialout {user}
#   install -d -m 0750 /etc/edge-gateway/credentials     # broker-secrets here, mode 0600
[Unit]
Description=edge-gateway street-cabinet IoT gateway
Documentation=file:/usr/share/doc/edge-gateway/operations.md
Wants=network-online.target modprobe@usbserial.service
After=network-online.target time-sync.target modprobe@usbserial.service
StartLimitIntervalSec=10min
StartLimitBurst=10

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec} run {config}
ExecReload=/bin/kill -HUP $MAINPID
# WATCHDOG=1 comes from the event loop every WatchdogSec/2: a hung loop gets SIGABRT and a restart.
WatchdogSec={watchdog}
Restart=on-failure
RestartSec=5
# The first start compiles the Numba kernels into the state directory: allow for a slow Pi.
TimeoutStartSec=600
# a shutdown stuck past it gets SIGABRT, not SIGKILL: faulthandler then writes each thread's stack to the journal
TimeoutStopSec=60
TimeoutStopFailureMode=abort

User={user}
Group={user}
SupplementaryGroups=dialout
StateDirectory=edge-gateway
StateDirectoryMode=0750
Environment=EG_STATE_DIR=/var/lib/edge-gateway
Environment=PYTHONDONTWRITEBYTECODE=1
# No docstrings or asserts (python -OO): about 3 MB less resident, most of it NumPy's docstrings.
# The venv is read-only to the service: byte-compile it once with `python -OO -m compileall -q VENV`.
Environment=PYTHONOPTIMIZE=2
LoadCredential=broker-secrets:/etc/edge-gateway/credentials/broker-secrets
# Files are private; the control socket is chmod-ed to 0660 by the daemon itself.
UMask=0077

DevicePolicy=closed
DeviceAllow=char-ttyUSB rw
DeviceAllow=char-ttyACM rw
DeviceAllow=char-ttyAMA rw
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateUsers=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
LockPersonality=yes
KeyringMode=private
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
# Not set on purpose: MemoryDenyWriteExecute (Numba's JIT needs W+X memory),
# IPAddressAllow/Deny (the broker's address may change), PrivateDevices (hides the serial ports).

StandardOutput=journal
StandardError=journal
SyslogIdentifier=edge-gateway

[Install]
WantedBy=multi-user.target
"""


def render(exec_path: str = DEFAULTS["exec"], config: str = DEFAULTS["config"], user: str = DEFAULTS["user"],
           watchdog: int = DEFAULTS["watchdog"]) -> str:
    return TEMPLATE.format(exec=_exec_word(exec_path), config=_exec_word(config), user=user, watchdog=watchdog)


def _exec_word(word: str) -> str:
    """One ``ExecStart=`` argument: systemd splits on spaces and expands ``%`` specifiers."""
    word = word.replace("%", "%%")
    if any(c.isspace() or c in "\\\"'" for c in word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def _find_executable() -> str | None:
    """The ``edge-gateway`` on PATH, else the one installed beside this Python (an unactivated venv)."""
    found = shutil.which("edge-gateway")
    if found:
        return found
    beside = Path(sys.executable).parent / "edge-gateway"
    return str(beside) if os.access(beside, os.X_OK) else None


_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def add_to(sub) -> None:
    from .cmd_common import doc_part

    p = sub.add_parser("service", help="install the hardened systemd unit")
    ssub = p.add_subparsers(dest="service_command", metavar="ACTION")
    ssub.required = True
    i = ssub.add_parser("install", help=f"write {UNIT_NAME}", description=doc_part(__doc__, 0))
    i.add_argument("--unit-dir", default="/etc/systemd/system", help="where to write the unit")
    i.add_argument("--config", default=DEFAULTS["config"], help="config file the service runs")
    i.add_argument("--user", default=DEFAULTS["user"], help="system user (and group) to run as")
    i.add_argument("--exec", dest="exec_path", help="edge-gateway executable (default: the one on PATH)")
    i.add_argument("--watchdog-sec", type=int, default=DEFAULTS["watchdog"], help="WatchdogSec (0: off)")
    i.add_argument("--stdout", action="store_true", help="print the unit instead of writing it")
    i.set_defaults(func=install)


def install(args) -> int:
    from .cmd_common import error

    exe = args.exec_path or _find_executable()
    if exe is None:
        error("no edge-gateway executable on PATH or beside this Python: give --exec PATH")
        return 2
    if args.watchdog_sec < 0:
        error("--watchdog-sec must be 0 or more")
        return 2
    if not _USER.fullmatch(args.user):
        error(f"--user {args.user!r}: not a system user name (lower case letters, digits, '_', '-')")
        return 2
    text = render(os.path.abspath(exe), os.path.abspath(args.config), args.user, args.watchdog_sec)
    if args.watchdog_sec == 0:
        text = text.replace("WatchdogSec=0\n", "")
    if args.stdout:
        sys.stdout.write(text)
        return 0
    target = Path(args.unit_dir) / UNIT_NAME
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{UNIT_NAME}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        error(f"cannot write {target}: {exc}")
        return 1
    print(f"wrote {target}")
    print("next:\n"
          f"  useradd --system --no-create-home --shell /usr/sbin/nologin --groups dialout {args.user}\n"
          f"  edge-gateway config validate {args.config}\n"
          f"  {sys.executable} -OO -m compileall -q {sys.prefix}      # the unit runs with PYTHONOPTIMIZE=2\n"
          "  systemctl daemon-reload && systemctl enable --now edge-gateway\n"
          "  systemd-analyze security edge-gateway      # expect 1.5 OK")
    return 0
