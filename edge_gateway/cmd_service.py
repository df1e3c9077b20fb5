"""``edge-gateway service install``: write the hardened systemd unit (also shipped as configs/edge-gateway.service).

The unit runs ``edge-gateway run CONFIG`` as ``Type=notify`` (READY=1 once the
kernels are warm and the queue is open), with the watchdog pinged from the
event loop every WatchdogSec/2, ``Restart=on-failure``, its own system user
(in ``dialout`` for the serial ports), and a sandbox that
``systemd-analyze security`` rates 1.5 "OK" (see docs/operations.md for each
setting and why ``MemoryDenyWriteExecute`` is not among them: Numba's JIT
writes machine code and then runs it).

Only the state directory (``StateDirectory=edge-gateway``, i.e.
/var/lib/edge-gateway: queue, Numba cache, control socket) is writable, so the
config's ``gateway.state_dir`` must be /var/lib/edge-gateway (checked here, as
the service will load the config). Serial devices: ``DeviceAllow=`` for the
groups ttyUSB, ttyACM (USB adapters), ttyAMA and ttyS (the Pi's PL011 and mini
UARTs) and ttySC (SC16IS7xx RS-485 HATs). Broker credentials come through
``LoadCredential=`` (an empty one when the file is missing: a broker without a
password) and are read from ``$CREDENTIALS_DIRECTORY``; point
``broker.secrets_file`` at
``${CREDENTIALS_DIRECTORY:-/etc/edge-gateway/credentials}/broker-secrets`` (the default is the
credential's source file, so the config also validates from a technician's shell).

Refused (exit 2) unless ``--force``: an executable, venv or config under a
folder the unit hides (/home, /root, /run/user by ProtectHome; /tmp, /var/tmp
by PrivateTmp), a config whose state dir is not /var/lib/edge-gateway, and an
installed unit that differs from this one (local changes belong in a drop-in:
``systemctl edit edge-gateway``; ``--force`` keeps the old file as ``.bak``).
``--stdout`` prints the unit on stdout (exit 0, so it can be piped) and runs the same checks on the
executable, venv and config: each problem that would refuse it is a ``warning: ...`` line on stderr.

``Documentation=`` names docs/operations.md of the install that holds the executable:
PREFIX/share/doc/edge-gateway/operations.md (setup.cfg ``data_files``), or, for an editable install
(``pip install -e .``, which installs no data files), the source tree's docs/operations.md. The line is
left out when neither exists.

Exit statuses: 0 written, unchanged (or printed with ``--stdout``); 1 cannot write; 2 bad usage or refused.
"""

from __future__ import annotations

import difflib
import os
import pwd
import re
import shutil
import sys
import sysconfig
from pathlib import Path

UNIT_NAME = "edge-gateway.service"
DEFAULTS = {"exec": "/usr/local/bin/edge-gateway", "config": "/etc/edge-gateway/gateway.yaml",
            "user": "edge-gateway", "watchdog": 30}
STATE_DIR = "/var/lib/edge-gateway"  # StateDirectory=edge-gateway: the only folder the service may write
CREDENTIAL_SOURCE = "/etc/edge-gateway/credentials/broker-secrets"
# DeviceAllow=char-NAME rw for each: NAME is a character-device group of /proc/devices. Used by doctor too.
DEVICE_GROUPS = ("ttyUSB", "ttyACM", "ttyAMA", "ttyS", "ttySC")
# What DevicePolicy=closed allows besides DeviceAllow= (systemd src/core/cgroup.c): these nodes and every pty.
CLOSED_POLICY_NODES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx")
CLOSED_POLICY_GROUPS = ("pts",)
# Folders the unit hides from the service, and the setting that does it (systemd.exec(5)).
HIDDEN_DIRS = {"/home": "ProtectHome=yes", "/root": "ProtectHome=yes", "/run/user": "ProtectHome=yes",
               "/tmp": "PrivateTmp=yes", "/var/tmp": "PrivateTmp=yes"}
DIFF_LINES = 12
DOC_FILE = "share/doc/edge-gateway/operations.md"  # under the install's prefix (setup.cfg data_files)

TEMPLATE = """\
# edge-gateway: street-cabinet IoT gateway (written by `edge-gateway service install`).
# systemd-analyze security --offline=yes rates this unit 1.5 "OK" (systemd 252).
# Local changes: `systemctl edit edge-gateway` (a drop-in), not this file: `service install` replaces it.
# Before the first start:
#   useradd --system --no-create-home --shell /usr/sbin/nologin --groups dialout {user}
#   install -d -m 0700 /etc/edge-gateway/credentials     # broker-secrets here, mode 0600 (if the broker has a password)
[Unit]
Description=edge-gateway street-cabinet IoT gateway
{documentation}# ttyUSB and ttyACM come from modules: DeviceAllow= only resolves groups that exist when the unit starts.
Wants=network-online.target modprobe@usbserial.service modprobe@cdc_acm.service
After=network-online.target time-sync.target modprobe@usbserial.service modprobe@cdc_acm.service
# No start limit: a fault that lasts a while (broker, device, disk) must not leave the gateway down for good.
StartLimitIntervalSec=0

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec} run {config}
ExecReload=/bin/kill -HUP $MAINPID
# WATCHDOG=1 comes from the event loop every WatchdogSec/2: a hung loop gets SIGABRT and a restart.
WatchdogSec={watchdog}
Restart=on-failure
# With no start limit, the pause between restarts is what keeps a persistent fault from flooding the journal.
RestartSec=10
# Exit 2 is an invalid config (or a state dir it may not write): restarting cannot fix it.
RestartPreventExitStatus=2
# The first start compiles the Numba kernels into the state directory: allow for a slow Pi.
TimeoutStartSec=600
# a shutdown stuck past it gets SIGABRT, not SIGKILL: faulthandler then writes each thread's stack to the journal
TimeoutStopSec=60
TimeoutStopFailureMode=abort
# Runs at ~150 MB (a cold compile peaks near 210 MB): a leak ends in a restart of this unit alone,
# not in the kernel's OOM killer choosing among sshd and the rest on a 1 GB Pi.
MemoryMax=512M

User={user}
Group={user}
SupplementaryGroups=dialout
StateDirectory=edge-gateway
StateDirectoryMode=0750
Environment=PYTHONDONTWRITEBYTECODE=1
# No docstrings or asserts (python -OO): about 3 MB less resident, most of it NumPy's docstrings.
# The venv is read-only to the service: byte-compile it once with `python -OO -m compileall -q VENV`.
Environment=PYTHONOPTIMIZE=2
LoadCredential=broker-secrets:{credential}
# Used when that file is missing (a broker without a password) instead of failing the start (243/CREDENTIALS).
# systemd 252 ignores an empty SetCredential= value: this one is a comment, i.e. a secrets file with no entries.
SetCredential=broker-secrets:# {credential} is missing
# Files are private; the control socket is chmod-ed to 0660 by the daemon itself.
UMask=0077

DevicePolicy=closed
{device_allow}
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
# IPAddressAllow/Deny (the broker's address may change), PrivateDevices (hides the serial ports),
# ProcSubset=pid (hides /proc/cpuinfo, from which LLVM learns an ARM CPU's model and features: Numba
# would compile every kernel for a generic ARMv8).

StandardOutput=journal
StandardError=journal
SyslogIdentifier=edge-gateway

[Install]
WantedBy=multi-user.target
"""


def render(exec_path: str = DEFAULTS["exec"], config: str = DEFAULTS["config"], user: str = DEFAULTS["user"],
           watchdog: int = DEFAULTS["watchdog"], doc: str | None = None) -> str:
    """The unit; ``doc`` (default: beside ``exec_path``, :func:`doc_path`) is its ``Documentation=``, left out
    if ``doc`` is ``""``."""
    device_allow = "\n".join(f"DeviceAllow=char-{g} rw" for g in DEVICE_GROUPS)
    doc = doc_path(exec_path) if doc is None else doc
    documentation = f"Documentation={_doc_url(doc)}\n" if doc else ""
    return TEMPLATE.format(exec=_exec_word(exec_path), config=_exec_word(config), user=user, watchdog=watchdog,
                           credential=CREDENTIAL_SOURCE, device_allow=device_allow, documentation=documentation)


def doc_path(exe: str) -> str:
    """Where the install that holds ``exe`` (PREFIX/bin/edge-gateway) put docs/operations.md:
    PREFIX/share/doc/edge-gateway/operations.md (setup.cfg ``data_files``, installed under the same prefix)."""
    return os.path.join(os.path.dirname(os.path.dirname(exe)), DOC_FILE)


def source_doc() -> str | None:
    """docs/operations.md of the source tree this package is imported from, when it is not an installed copy
    (an editable install, ``pip install -e .``: its package is the source tree's folder), if it exists."""
    package = Path(__file__).resolve().parent
    site_dirs = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    if package.parent in site_dirs:  # copied into site-packages: its docs are under the prefix (doc_path)
        return None
    doc = package.parent / "docs" / "operations.md"
    return str(doc) if doc.is_file() else None


def find_doc(exe: str) -> str | None:
    """The operations doc of the install that holds ``exe`` (a link is followed), or None if it has none:
    :func:`doc_path` if that file exists; else, if ``exe`` is this Python's own (its prefix is
    ``sys.prefix``), the source tree's of an editable install (:func:`source_doc`)."""
    real = os.path.realpath(exe)
    installed = doc_path(real)
    if os.path.isfile(installed):
        return installed
    if os.path.dirname(os.path.dirname(real)) == os.path.realpath(sys.prefix):
        return source_doc()
    return None


def _doc_url(path: str) -> str:
    """A ``file:`` URL; systemd splits ``Documentation=`` on spaces, so they are %-escaped (and ``%`` is
    doubled: systemd expands specifiers there too)."""
    from urllib.parse import quote

    return "file:" + quote(path).replace("%", "%%")


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


def under(path: str, top: str) -> bool:
    """Whether the absolute ``path`` is ``top`` or inside it."""
    return path == top or path.startswith(top + "/")


def hidden_dir(path: str) -> tuple[str, str] | None:
    """(the folder the unit hides that the absolute ``path`` is under, the setting that hides it), or None."""
    return next(((top, setting) for top, setting in HIDDEN_DIRS.items() if under(path, top)), None)


def hidden_by_unit(path: str) -> tuple[str, str, str] | None:
    """(the path as written or resolved, the hidden folder it is under, the unit setting), or None."""
    for shown in dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]):
        hidden = hidden_dir(shown)
        if hidden is not None:
            return shown, *hidden
    return None


def _interpreter(exe: str) -> str | None:
    """The ``#!`` interpreter of a console script (the venv's Python), or None."""
    try:
        with open(exe, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    words = first[2:].split() if first.startswith(b"#!") else []
    return os.fsdecode(words[0]) if words else None


def path_problems(exe: str, config: str) -> list[str]:
    """Why the service could not see its executable, venv or config (ProtectHome=, PrivateTmp=)."""
    problems = []
    python = _interpreter(exe)
    for what, path in (("executable", exe), ("the executable's Python (its venv)", python), ("config", config)):
        hidden = hidden_by_unit(path) if path else None
        if hidden is None:
            continue
        shown, top, setting = hidden
        where = path if shown == os.path.abspath(path) else f"{path} -> {shown}"
        fix = ("put it in /etc/edge-gateway/" if what == "config" else
               "install into e.g. /opt/edge-gateway (python3 -m venv /opt/edge-gateway) and give "
               "--exec /opt/edge-gateway/bin/edge-gateway")
        problems.append(f"{what} {where} is under {top}, which the unit's {setting} hides from the service: {fix}")
    return problems


def service_env(unit_text: str, user: str) -> dict[str, str]:
    """The environment systemd gives the service (systemd.exec(5)), for loading the config as it will."""
    try:
        pw = pwd.getpwnam(user)
        home, shell = pw.pw_dir, pw.pw_shell
    except KeyError:  # created after the unit is written (the printed next steps)
        home, shell = "/", "/usr/sbin/nologin"
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "USER": user, "LOGNAME": user,
           "HOME": home, "SHELL": shell, "STATE_DIRECTORY": STATE_DIR,
           "CREDENTIALS_DIRECTORY": f"/run/credentials/{UNIT_NAME}"}
    for line in unit_text.splitlines():
        if line.startswith("Environment="):
            name, _, value = line[len("Environment="):].partition("=")
            env[name] = value
    return env


def config_problems(config_path: str, unit_text: str, user: str) -> list[str]:
    """The config as the service will load it: it must be valid and keep its state in STATE_DIR."""
    from . import config

    try:
        cfg = config.load(config_path, env=service_env(unit_text, user))
    except config.ConfigError as exc:
        lines = str(exc).splitlines()  # one problem a mistake, as validate prints them
        return lines[:-1] + [f"{lines[-1]} (loaded as the service will load it, it would exit 2)"]
    state_dir = os.path.normpath(os.path.abspath(cfg.state_dir))
    if state_dir == STATE_DIR:
        return []
    return [f"{config_path}: gateway.state_dir is {state_dir} for the service; it must be {STATE_DIR}, the unit's "
            f"StateDirectory= (the only folder the service may write, and where status, reload and doctor look)"]


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
    i.add_argument("--stdout", action="store_true",
                   help="print the unit instead of writing it (exit 0; problems that would refuse it are "
                        "warnings on stderr)")
    i.add_argument("--force", action="store_true",
                   help="install despite the checks, and replace a unit that differs (kept as .bak)")
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
    exe, config_path = os.path.abspath(exe), os.path.abspath(args.config)
    # the docs of the install itself (/usr/local/bin/edge-gateway may link into a venv); none: no Documentation=
    text = render(exe, config_path, args.user, args.watchdog_sec, doc=find_doc(exe) or "")
    if args.watchdog_sec == 0:
        text = text.replace("WatchdogSec=0\n", "")
    problems = path_problems(exe, config_path) + config_problems(config_path, text, args.user)
    if args.stdout:  # the unit stays pipeable; what `install` would refuse it for is said on stderr
        sys.stdout.write(text)
        sys.stdout.flush()
        for problem in problems:
            error(f"warning: {problem} (install refuses this unit unless --force)")
        return 0
    for problem in problems:
        error(f"warning: {problem} (--force: installed anyway)" if args.force else f"{problem} (or --force)")
    if problems and not args.force:
        return 2
    target = Path(args.unit_dir) / UNIT_NAME
    try:
        old = target.read_text()
    except FileNotFoundError:
        old = None
    except (OSError, UnicodeDecodeError) as exc:
        error(f"cannot read {target}: {exc}")
        return 1
    if old == text:
        print(f"{target} unchanged")
        return 0
    if old is not None and not args.force:
        error(f"{target} differs from the unit this version writes: not replaced; put local changes in a drop-in "
              f"with `systemctl edit edge-gateway`, or give --force to replace it (the old file is kept as "
              f"{target.name}.bak)")
        diff = list(difflib.unified_diff(old.splitlines(), text.splitlines(), str(target), "new", n=0, lineterm=""))
        more = len(diff) - DIFF_LINES
        shown = diff[:DIFF_LINES] + ([f"... {more} more lines"] if more > 0 else [])
        sys.stderr.write("".join(f"{ln}\n" for ln in shown))
        return 2
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if old is not None:
            shutil.copy2(target, target.with_name(target.name + ".bak"))
        tmp = target.with_name(f".{UNIT_NAME}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        error(f"cannot write {target}: {exc}")
        return 1
    print(f"wrote {target}" + ("" if old is None else f" (the old one is {target.name}.bak)"))
    print("next:\n"
          f"  useradd --system --no-create-home --shell /usr/sbin/nologin --groups dialout {args.user}\n"
          "  install -d -m 0700 /etc/edge-gateway/credentials\n"
          "  # only if the broker needs a password: 'username: ...' and 'password: ...' lines in\n"
          f"  #   {CREDENTIAL_SOURCE} (chmod 600), and in the config\n"
          "  #   broker.secrets_file: ${CREDENTIALS_DIRECTORY:-/etc/edge-gateway/credentials}/broker-secrets\n"
          f"  edge-gateway config validate {args.config}\n"
          f"  {sys.executable} -OO -m compileall -q {sys.prefix}      # the unit runs with PYTHONOPTIMIZE=2\n"
          f"  edge-gateway doctor {args.config} --user {args.user}\n"
          "  systemctl daemon-reload && systemctl enable --now edge-gateway\n"
          "  systemd-analyze security edge-gateway      # expect 1.5 OK")
    return 0
