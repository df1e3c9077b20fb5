"""``edge-gateway doctor``: check what a gateway in a street cabinet needs, and say how to fix what fails.

Checks, each ``ok``, ``warn``, ``fail`` or ``unknown``:

* config: the file parses and validates;
* user: the service user exists: ``--user``, else ``edge-gateway`` when that
  user exists (said so in the output), else the current one; shown with
  ``--user`` or as the default service user; a missing user is a failure;
* serial: every configured serial port exists, is a character device or pty,
  the unit's ``DevicePolicy=closed`` lets the service open it (the group of
  its major number in /proc/devices is one of the unit's ``DeviceAllow=``),
  and the service user may read and write it: owner, group membership
  (``dialout``) and mode;
* state dir: the service user may search every folder above it and write it
  (or, not yet created, the nearest existing folder), by the same owner /
  group / other mode bits, on a file system mounted read-write; and it has
  free space for the queue (``queue.max_bytes`` plus 50 MB); a warning when it
  is not inside /var/lib/edge-gateway, the only folder the unit may write;
* state dir id: when the state directory already holds a queue, the gateway
  whose it is (the id the queue recorded at its first start): another
  ``gateway.id`` fails, as ``edge-gateway run`` would refuse to start there
  (exit 2, which systemd does not restart); with how to change the id without
  losing the queue;
* broker: ``broker.secrets_file`` (if set) opens and parses, by the rules the
  gateway applies; the host name resolves (DNS), a TCP connection opens, and with
  ``broker.tls`` the TLS handshake verifies against the configured CA, and the
  client key file is not accessible by group/others (a warning, or a failure
  with ``broker.strict_secrets``: the gateway then refuses it);
* coap: a row ``coap ID`` per CoAP sensor: its node answers one confirmable
  GET per configured resource (``--timeout`` each, all at once) with a payload
  the coap driver can read: the response code, content format and size, or
  what is wrong (no answer, 4.04: no such resource, not valid SenML) and what
  to do;
* clock: synchronised? from ``timedatectl``, ``chronyc``, or the kernel's
  ``adjtimex`` state; ``unknown`` when none can tell (a warning, not a failure);
* daemon: whether a gateway answers on the control socket (information only).

``--skip broker`` (repeatable) leaves checks out, e.g. before the broker exists;
a skipped check is not run (no network waits), and an unknown name is bad usage.

``--json`` prints ``{"ok": bool, "checks": [{"name", "status", "detail", "fix"}]}``.

Exit statuses: 0 no check failed (warnings and unknowns allowed); 1 at least
one check failed; 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import errno
import grp
import json
import os
import pwd
import shutil
import socket
import ssl
import stat
import subprocess
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .cmd_service import (CLOSED_POLICY_GROUPS, CLOSED_POLICY_NODES, DEFAULTS, DEVICE_GROUPS, STATE_DIR, hidden_dir,
                          under)


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | unknown
    detail: str
    fix: str = ""


CHECKS = ("config", "user", "serial", "state dir", "state dir id", "broker secrets", "broker dns", "broker tcp", "broker tls",
          "broker tls key", "coap", "clock", "daemon")


def _check_prefix(text: str) -> str:
    """argparse ``type=`` of ``--skip``: a misspelt name would otherwise skip nothing, silently."""
    import argparse

    if not text or not any(name.startswith(text) or text.startswith(name + " ") for name in CHECKS):
        raise argparse.ArgumentTypeError(f"no check named {text!r}; checks: {', '.join(CHECKS)}")
    return text


def add_to(sub) -> None:
    from .cmd_common import DEFAULT_CONFIG, doc_part, positive_float

    # every paragraph after the title (one alone cut the list of checks off), without the reST quotes
    text = "\n\n".join(doc_part(__doc__, i) for i in range(1, len((__doc__ or "").split("\n\n"))))
    p = sub.add_parser("doctor", help="check ports, broker, CoAP nodes, clock, disk and config; print fixes",
                       description=text.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    p.add_argument("--user", help="the user the service runs as (default: edge-gateway if it exists, else you)")
    p.add_argument("--timeout", type=positive_float, default=3.0, help="network timeout in seconds")
    p.add_argument("--skip", action="append", default=[], metavar="CHECK", type=_check_prefix,
                   help="leave out checks whose name starts with CHECK (serial, state, broker, coap, clock, daemon)")
    p.add_argument("--json", action="store_true", help='print {"ok": ..., "checks": [...]} instead of a table')
    p.set_defaults(func=handle)


def handle(args) -> int:
    from . import config

    def wanted(name: str) -> bool:
        return not any(name.startswith(s) for s in args.skip)

    checks: list[Check] = []
    try:
        cfg = config.load(args.config)
        n = len(cfg.sensors)
        checks.append(Check("config", "ok", f"{args.config}: valid, {n} sensor{'' if n == 1 else 's'}"))
    except config.ConfigError as exc:
        cfg = None
        checks.append(Check("config", "fail", str(exc), f"edit the file and run `edge-gateway config validate {args.config}`"))
    if args.user:
        user, note = args.user, ""
    else:
        user, note = default_user()
    checks.extend(check_user(user, shown=bool(args.user or note), note=note))
    if cfg is not None:
        for s in cfg.sensors:
            port = getattr(s.options, "port", None)
            if isinstance(port, str) and port and "://" not in port and wanted(f"serial {s.id}"):
                checks.append(check_serial(s.id, port, user))
        if wanted("state dir"):
            checks.append(check_state_dir(cfg.state_dir, cfg.queue.max_bytes, user))
        if wanted("state dir id"):
            checks.extend(check_state_dir_id(cfg))
        if wanted("broker secrets"):
            checks.extend(check_secrets(cfg.broker))
        if any(wanted(n) for n in ("broker dns", "broker tcp", "broker tls")):  # skipped: no network waits
            checks.extend(check_broker(cfg.broker, args.timeout))
        if wanted("broker tls key"):
            checks.extend(check_tls_key(cfg.broker))
        coap = [s for s in cfg.sensors if s.driver == "coap" and wanted(f"coap {s.id}")]  # skipped: no waits
        if coap:
            checks.extend(check_coap(coap, args.timeout))
    if wanted("clock"):
        checks.append(clock_wait_note(check_clock(), None if cfg is None else cfg.gateway.clock_sync_wait_s))
    if cfg is not None and wanted("daemon"):
        checks.append(check_daemon(cfg.state_dir / "control.sock"))
    checks = [c for c in checks if wanted(c.name)]
    failed = any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps({"ok": not failed, "user": user, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        from .cmd_common import table

        table([[c.status.upper(), c.name, c.detail] for c in checks], ["STATUS", "CHECK", "DETAIL"])
        fixes = [c for c in checks if c.fix and c.status in ("fail", "warn")]
        if fixes:
            print("\nto fix:")
            for c in fixes:
                print(f"  {c.name}: {c.fix}")
        print(f"\n{'FAILED' if failed else 'OK'}: {sum(c.status == 'fail' for c in checks)} failed, "
              f"{_count(sum(c.status == 'warn' for c in checks), 'warning')}, "
              f"{sum(c.status == 'unknown' for c in checks)} unknown, "
              f"{sum(c.status == 'ok' for c in checks)} ok")
    return 1 if failed else 0


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- user -------------------------------------------------------------------------------------

ADD_USER = "useradd --system --no-create-home --groups dialout {}"
SEE_USER = "create the user first (see the user check)"


def user_groups(user: str) -> tuple[int, set[int]]:
    """(uid, every gid of ``user``: primary and supplementary)."""
    pw = pwd.getpwnam(user)
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    return pw.pw_uid, gids


def default_user(service_user: str | None = None) -> tuple[str, str]:
    """(the user to check as, a note for the output): the unit's user when it exists, else the current one."""
    service_user = service_user or DEFAULTS["user"]
    try:
        pwd.getpwnam(service_user)
    except KeyError:
        return pwd.getpwuid(os.geteuid()).pw_name, ""
    return service_user, "checked as the service user (the default when it exists; --user NAME for another)"


def check_user(user: str, shown: bool, note: str = "") -> list[Check]:
    """A missing service user fails on its own: with no serial sensor, nothing else would say so."""
    try:
        uid, gids = user_groups(user)
    except KeyError:
        return [Check("user", "fail", f"user {user!r} does not exist", ADD_USER.format(user))]
    if not shown:
        return []
    detail = f"{user}: uid {uid}, groups {', '.join(sorted(map(_group_name, gids)))}"
    return [Check("user", "ok", f"{detail}; {note}" if note else detail)]


def mode_allows(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Whether ``uid`` (in ``gids``) has all of ``bits`` (r=4, w=2, x=1) on a file by its mode.

    The owner's bits apply to the owner, else the group's to a member, else the others'; root may.
    """
    if uid == 0:
        return True
    if st.st_uid == uid:
        granted = st.st_mode >> 6
    elif st.st_gid in gids:
        granted = st.st_mode >> 3
    else:
        granted = st.st_mode
    return granted & bits == bits


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _describe(st: os.stat_result) -> str:
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {_owner_name(st.st_uid)}, group {_group_name(st.st_gid)}"


# --- serial -----------------------------------------------------------------------------------

def check_serial(sensor: str, port: str, user: str) -> Check:
    name = f"serial {sensor}"
    try:
        real = os.path.realpath(port)
        st = os.stat(real)
    except FileNotFoundError:
        return Check(name, "fail", f"{port}: no such device",
                     "plug the sensor in; check `ls -l /dev/serial/by-id/` and the port in the config")
    except OSError as exc:
        return Check(name, "fail", f"{port}: {exc.strerror}", "check the path and its parent directories")
    if not stat.S_ISCHR(st.st_mode):
        return Check(name, "fail", f"{port} -> {real} is not a character device", "point the sensor at the tty device")
    mode = stat.S_IMODE(st.st_mode)
    gname = _group_name(st.st_gid)
    detail = f"{port} -> {real} mode {mode:04o} group {gname}"
    denied = _device_denied(real, st.st_rdev)
    if denied:
        return Check(name, "fail", f"{detail}; {denied[0]}", denied[1])
    try:
        uid, gids = user_groups(user)
    except KeyError:
        return Check(name, "fail", f"{detail}; user {user!r} does not exist", SEE_USER)
    if mode_allows(st, uid, gids, 0o6):
        return Check(name, "ok", f"{detail}; {user} may read and write it")
    if st.st_gid not in gids and mode & 0o060 == 0o060:
        return Check(name, "fail", f"{detail}; {user} is not in group {gname}",
                     f"usermod -aG {gname} {user} (then restart the service / log in again)")
    fix = ("a udev rule that makes the device group dialout mode 0660, e.g. "
           f'SUBSYSTEM=="tty", KERNEL=="{os.path.basename(real)}", GROUP="dialout", MODE="0660" '
           "in /etc/udev/rules.d/99-edge-gateway.rules (then `udevadm trigger`)")
    if not _in_group("dialout", gids):
        fix += f"; and usermod -aG dialout {user} (then restart the service / log in again)"
    return Check(name, "fail", f"{detail}; {user} may not read and write it", fix)


def _in_group(name: str, gids: set[int]) -> bool:
    try:
        return grp.getgrnam(name).gr_gid in gids
    except KeyError:
        return False


def char_device_groups(major: int, proc_devices: str = "/proc/devices") -> list[str]:
    """The names /proc/devices gives character-device ``major`` (one major may have several: 4 is tty and ttyS)."""
    names, chars = [], False
    with open(proc_devices) as f:
        for line in f:
            if line.strip().endswith("devices:"):
                chars = line.startswith("Character")
                continue
            number, _, group = line.strip().partition(" ")
            if chars and number.isdigit() and int(number) == major:
                names.append(group.strip())
    return names


def _device_denied(real: str, rdev: int) -> tuple[str, str] | None:
    """(why the unit's device policy denies the device, the fix), or None; unknown (no /proc/devices): None.

    systemd resolves ``DeviceAllow=char-NAME`` to NAME's major number, all minors."""
    if real in CLOSED_POLICY_NODES:
        return None
    major = os.major(rdev)
    try:
        groups = char_device_groups(major)
    except OSError:
        return None
    if set(groups) & set(DEVICE_GROUPS + CLOSED_POLICY_GROUPS):
        return None
    named = "/".join(groups) if groups else "not in /proc/devices"
    return (f"the service may not open it: major {major} ({named}) is not one of the unit's DeviceAllow= groups "
            f"({', '.join(DEVICE_GROUPS)})",
            f"`systemctl edit edge-gateway` and add [Service] DeviceAllow=char-{groups[0] if groups else 'NAME'} rw")


# --- state dir --------------------------------------------------------------------------------

def check_state_dir(state_dir: Path, queue_max: int, user: str) -> Check:
    """Room for the queue, and whether ``user`` may write there or create it."""
    probe = state_dir
    while not os.path.exists(probe) and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return Check("state dir", "fail", f"{state_dir}: {exc.strerror}", "create it or fix gateway.state_dir")
    need = queue_max + 50 * 1024 * 1024
    free_mb = usage.free / 1e6
    detail = f"{state_dir}{'' if probe == state_dir else ' (not yet created)'}: {free_mb:.0f} MB free, " \
             f"queue may use {queue_max / 1e6:.0f} MB"
    problem = _write_problem(state_dir, probe, user)
    if problem:
        return Check("state dir", "fail", f"{detail}; {problem[0]}", problem[1])
    detail += f"; {user} may {'write' if probe == state_dir else 'create'} it"
    if usage.free < need:
        return Check("state dir", "fail", detail,
                     "free space on that file system, or lower queue.max_bytes")
    warnings, fixes = [], []
    outside = _outside_unit(state_dir)
    if outside:
        warnings.append(outside)
        fixes.append(f"set gateway.state_dir: {STATE_DIR} (the unit's StateDirectory=)")
    if usage.free < 2 * need:
        fixes.append("little headroom: consider lowering queue.max_bytes")
    if fixes:
        return Check("state dir", "warn", "; ".join([detail, *warnings]), "; ".join(fixes))
    return Check("state dir", "ok", detail)


def _outside_unit(state_dir: Path) -> str:
    """Why the service could not keep its state in ``state_dir`` (its unit's sandbox), or ""."""
    path = os.path.normpath(os.path.abspath(state_dir))
    if under(path, STATE_DIR):
        return ""
    hidden = hidden_dir(path)
    if hidden is None:
        return f"not inside {STATE_DIR}: the service may write nothing else (ProtectSystem=strict)"
    top, setting = hidden
    if setting.startswith("PrivateTmp"):
        return (f"not inside {STATE_DIR}: under the service {top} is its own, emptied at each restart "
                f"({setting}): the queue would be lost")
    return f"not inside {STATE_DIR}: the service does not see {top} ({setting})"


def _write_problem(state_dir: Path, probe: Path, user: str) -> tuple[str, str] | None:
    """(why ``user`` cannot write ``state_dir``, the fix), or None; ``probe`` is its nearest existing folder.

    Writing needs w+x on that folder and x on every folder above it, both as written and after symlinks.
    """
    try:
        uid, gids = user_groups(user)
    except KeyError:
        return f"user {user!r} does not exist", SEE_USER
    create = probe != state_dir
    unit = "or use StateDirectory= (the unit does)"
    fix = f"install -d -o {user} -m 0750 {state_dir}, {unit}" if create else f"chown {user} {state_dir}, {unit}"
    real = Path(os.path.realpath(probe))
    above = dict.fromkeys([*reversed(Path(os.path.abspath(probe)).parents), *reversed(real.parents)])
    try:
        for folder in above:
            st = os.stat(folder)
            if not mode_allows(st, uid, gids, 0o1):
                return (f"{user} may not enter {folder} ({_describe(st)})",
                        f"chmod o+x {folder}, or add {user} to its group, or move gateway.state_dir")
        st = os.stat(real)
        read_only = os.statvfs(real).f_flag & os.ST_RDONLY
    except OSError as exc:
        return f"cannot check {exc.filename}: {exc.strerror}", "check the path and its parent directories"
    if not stat.S_ISDIR(st.st_mode):
        return f"{probe} is not a directory", "fix gateway.state_dir"
    if read_only:
        return f"{real} is on a read-only file system", "move gateway.state_dir to a writable file system"
    if not mode_allows(st, uid, gids, 0o3):
        where = f"create it in {probe}" if create else "write it"
        return f"{user} may not {where} ({_describe(st)})", fix
    return None


def check_state_dir_id(cfg) -> list[Check]:
    """Whose queue the state directory holds: another gateway's fails (``run`` would exit 2). None: no queue yet."""
    import sqlite3

    from .queue import read_owner
    from .reload import new_id_advice, state_dir_taken

    path = cfg.queue_path
    try:
        found = read_owner(path)
    except (sqlite3.Error, OSError) as exc:
        return [Check("state dir id", "unknown", f"cannot read {path}: {exc}",
                      "run doctor as root or as the service user")]
    if found is None or found[0] is None:
        return []
    owner, depth = found
    queued = _count(depth, "unsent message")
    if owner == cfg.gateway.id:
        return [Check("state dir id", "ok", f"{path}: the queue of gateway {owner!r}, {queued}")]
    return [Check("state dir id", "fail", f"{state_dir_taken(cfg.state_dir, owner, cfg.gateway.id)} "
                  f"(exit 2, which systemd does not restart); {queued} there now",
                  f"{new_id_advice(cfg.state_dir, owner)}; or set gateway.id back to {owner!r}")]


# --- broker -----------------------------------------------------------------------------------

def check_secrets(broker) -> list[Check]:
    """``broker.secrets_file`` opens and parses, by the rules the gateway applies at each connect."""
    from .secrets import SecretsError, read

    path = getattr(broker, "secrets_file", "")
    if not path:
        return []
    fix = (f"write 'username: ...' and 'password: ...' lines to {path} (chmod 600); a broker without a password "
           "needs no secrets_file: remove broker.secrets_file")
    try:
        creds, problem = read(path, bool(getattr(broker, "strict_secrets", False)))
    except SecretsError as exc:
        return [Check("broker secrets", "fail", str(exc), fix)]
    if problem:
        return [Check("broker secrets", "warn", problem, f"chmod 600 {path} (owned by root or the service user)")]
    from .config import transport_warnings

    clear = [text for key, text in transport_warnings(broker) if key == "broker.secrets_file"]
    if clear and creds.password:
        return [Check("broker secrets", "warn", f"{path}: {clear[0]}",
                      "set broker.tls (the broker's port for TLS, usually 8883, and its CA in broker.tls.ca_file)")]
    return [Check("broker secrets", "ok", f"{path}: username and {'password' if creds.password else 'no password'}")]

def check_broker(broker, timeout: float) -> list[Check]:
    host, port = broker.host, broker.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        from .config import host_problem

        problem = host_problem(host)  # a URL or host:port is no DNS problem: say what is
        return [Check("broker dns", "fail", f"{host}: {exc.strerror}",
                      f"broker.host: {problem}" if problem else
                      "check broker.host and the DNS servers (/etc/resolv.conf, `resolvectl status`)")]
    addrs = sorted({i[4][0] for i in infos})
    checks = [Check("broker dns", "ok", f"{host} -> {', '.join(addrs)}")]
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        checks.append(Check("broker tcp", "fail", f"{host}:{port}: {exc.strerror or exc}",
                            f"is the broker up? a firewall or APN blocking the port? try `nc -vz {host} {port}`"))
        return checks
    with sock:
        checks.append(Check("broker tcp", "ok", f"{host}:{port} accepts connections"))
        tls = getattr(broker, "tls", None)
        if tls is not None:
            checks.append(_check_tls(sock, host, tls, timeout))
    return checks


def check_tls_key(broker) -> list[Check]:
    """The client key's mode, by the rule the gateway applies at each connect (no network needed)."""
    from .secrets import SecretsError, mode_problem

    tls = getattr(broker, "tls", None)
    if tls is None or not tls.key_file:
        return []
    key = tls.key_file
    strict = bool(getattr(broker, "strict_secrets", False))
    try:
        st = os.stat(key)
    except OSError as exc:
        return [Check("broker tls key", "fail", f"{key}: {exc.strerror}", "check broker.tls.key_file")]
    fix = f"chmod 600 {key} (owned by the service user), or use LoadCredential= in the unit"
    try:
        problem = mode_problem(key, st.st_mode, strict, what="TLS key file")
    except SecretsError as exc:
        return [Check("broker tls key", "fail", str(exc), fix)]
    if problem:
        return [Check("broker tls key", "warn", problem, fix)]
    return [Check("broker tls key", "ok", f"{key} mode {stat.S_IMODE(st.st_mode):04o}")]


def _check_tls(sock, host: str, tls, timeout: float) -> Check:
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
        ctx.check_hostname = bool(tls.check_hostname)
        if tls.cert_file:
            ctx.load_cert_chain(tls.cert_file, tls.key_file or None)
        sock.settimeout(timeout)
        with ctx.wrap_socket(sock, server_hostname=host) as s:
            return Check("broker tls", "ok", f"{s.version()}, server certificate verified against {tls.ca_file}")
    except ssl.SSLCertVerificationError as exc:
        return Check("broker tls", "fail", f"certificate not trusted: {exc.verify_message}",
                     "check broker.tls.ca_file, the broker's certificate chain and the clock (expiry)")
    except (ssl.SSLError, OSError) as exc:
        return Check("broker tls", "fail", f"TLS handshake failed: {exc}",
                     "check the port is the TLS listener and the client certificate/key files")


# --- coap -------------------------------------------------------------------------------------

COAP_SETUP_S = 2.0  # bound on creating and on shutting down the client context
_FORMATS = {None: "a number as text", 0: "a number as text", 50: "JSON (a number or an object of numbers)",
            60: "CBOR (a number or a map of numbers)", 110: "SenML JSON", 112: "SenML CBOR"}
COAP_FORMATS_FIX = ("the driver reads SenML JSON (content-format 110) or CBOR (112), JSON (50), CBOR (60) or a "
                    "plain number (0): check what the node's firmware sends")


def check_coap(sensors, timeout: float) -> list[Check]:
    """A Check per CoAP sensor (``coap ID``): one confirmable GET per configured resource, all at once.

    Bounded: each request waits ``timeout`` s at most, the whole check at most ``timeout`` plus twice
    :data:`COAP_SETUP_S` plus 1 s. Runs its own event loop (in a thread when called from inside one)."""
    if not sensors:
        return []
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coap_checks(sensors, timeout))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coap_checks(sensors, timeout)).result()


async def coap_checks(sensors, timeout: float) -> list[Check]:
    """:func:`check_coap` in a running loop: all sensors at once, each with an aiocoap client context of its own.

    Own contexts, as the driver has: Linux reports an ICMP "port unreachable" on a UDP socket's next
    send too, so on a shared socket one dead node's refusal could be blamed on another's request."""
    limit = timeout + 2 * COAP_SETUP_S + 1.0
    tasks = [asyncio.ensure_future(_coap_sensor_alone(s.options, timeout)) for s in sensors]
    done, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=1.0)
    checks = []
    for s, task in zip(sensors, tasks):
        name = f"coap {s.id}"
        if task in done and task.exception() is None:
            status, detail, fix = task.result()
            checks.append(Check(name, status, detail, fix))
        elif task in done:
            checks.append(Check(name, "unknown", f"{s.options.uri}: check failed: {task.exception()!r}"))
        else:
            checks.append(Check(name, "unknown", f"{s.options.uri}: no result within {limit:g} s"))
    return checks


async def _coap_sensor_alone(opts, timeout: float) -> tuple[str, str, str]:
    """:func:`_coap_sensor` with a client context created for it and shut down after."""
    try:
        from aiocoap import Context

        ctx = await asyncio.wait_for(Context.create_client_context(), COAP_SETUP_S)
    except Exception as exc:  # noqa: BLE001 - no client here: the node is unknown, not failed
        return ("unknown", f"cannot start a CoAP client here: {exc or type(exc).__name__}",
                "check that the gateway's Python environment has aiocoap")
    try:
        return await _coap_sensor(ctx, opts, timeout)
    finally:
        try:
            await asyncio.wait_for(ctx.shutdown(), COAP_SETUP_S)
        except Exception:  # noqa: BLE001 - the answers are in; a slow shutdown changes none
            pass


async def _coap_get(ctx, uri: str, timeout: float):
    """The response to one confirmable GET of ``uri``, or the exception (asyncio.TimeoutError: no answer)."""
    from aiocoap import GET, Message

    try:  # confirmable: aiocoap's default (transport_tuning Reliable)
        request = ctx.request(Message(code=GET, uri=uri), handle_blockwise=False)
        return await asyncio.wait_for(request.response, timeout)
    except (asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - said per resource
        return exc


async def _coap_sensor(ctx, opts, timeout: float) -> tuple[str, str, str]:
    """(status, detail, fix) of one CoAP sensor: its node first (does it answer?), then each resource."""
    from aiocoap import error

    from drivers.coap import no_answer, node_address

    node = node_address(opts.uri)
    host = node.split("://", 1)[1].rpartition(":")[0].strip("[]")
    urls = [opts.uri.rstrip("/") + res.path for res in opts.resources]  # as the driver asks (CoapDriver._uri)
    got = await asyncio.gather(*(_coap_get(ctx, url, timeout) for url in urls))
    lost = [r for r in got if isinstance(r, (asyncio.TimeoutError, error.NetworkError))]
    if len(lost) == len(got):  # the node does not answer at all: one line for it, not one per resource
        ping = f"is the node powered and on the network? try `ping {host}`"
        first = next((r for r in lost if not isinstance(r, asyncio.TimeoutError)), None)
        if first is None:
            return "fail", f"no answer from {node} within {timeout:g} s", ping
        cause = first.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED:
            port = node.rpartition(":")[2]
            proto = "TCP" if node.startswith("coap+tcp") else "UDP"
            return "fail", no_answer(opts.uri, first), (
                f"{host} is up but nothing listens on {proto} port {port}: is the node's CoAP server running, "
                "and is the port in `uri` right?")
        return "fail", no_answer(opts.uri, first), ping
    parts, statuses, fixes = [], [], []
    for res, url, r in zip(opts.resources, urls, got):
        asked = _path_of(url)  # the path requested: a path in `uri` goes before the resource's
        status, text, fix = _coap_resource(res, asked, r, opts, timeout, host)
        parts.append(f"{node + asked if not parts else asked}: {text}")
        statuses.append(status)
        if fix and fix not in fixes:
            fixes.append(fix)
    worst = next(s for s in ("fail", "warn", "unknown", "ok") if s in statuses)
    return worst, "; ".join(parts), "; ".join(fixes)


def _path_of(url: str) -> str:
    """The path (and query) part of a CoAP URL: what the node is asked for."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _coap_resource(res, asked: str, r, opts, timeout: float, host: str) -> tuple[str, str, str]:
    """(status, what the resource answered, fix) for one resource of a node that answers; ``asked``: the path
    requested (the resource's, after any path in ``uri``)."""
    from aiocoap import SERVICE_UNAVAILABLE, error

    from drivers.coap import network_reason

    if isinstance(r, asyncio.TimeoutError):
        return "fail", f"no answer within {timeout:g} s", \
            f"is the node overloaded or the network lossy? try `ping {host}`"
    if isinstance(r, error.NetworkError):
        why = network_reason(r)
        return "fail", f"no answer{f' [{why}]' if why else ''}", f"try `ping {host}`"
    if isinstance(r, Exception):
        return "unknown", f"request failed: {r or type(r).__name__}", ""
    code = r.code
    if code.is_successful():
        return _coap_payload(res, r, opts)
    if code.dotted == "4.04":
        if asked != res.path:  # a path in `uri` too: the node was asked for both
            return "fail", f"{code}: the node has no resource {asked}", \
                (f"`uri` has a path ({_path_of(opts.uri.rstrip('/'))}) that goes before each resource's: give "
                 f"`uri` as coap://host[:port] only, and each path in `resources`")
        return "fail", f"{code}: the node has no resource {res.path}", \
            f"check `resources` in the config: is the path {res.path} right?"
    if code == SERVICE_UNAVAILABLE:
        age = r.opt.max_age
        return "warn", f"{code}: the node is busy{f' for {age} s' if age is not None else ''}", \
            "the driver asks again later; if it persists, see the node's logs or restart it"
    if code.class_ == 5:
        return "warn", f"{code}: the node fails to serve it", "see the node's logs or restart it"
    return "fail", f"{code}: the node refuses the request", "see the node's manual: what does it expect at this path?"


def _coap_payload(res, r, opts) -> tuple[str, str, str]:
    """(status, what a 2.xx response holds, fix): decoded as the driver decodes it, within its limits."""
    import time

    from drivers import senml
    from drivers.coap import decode_payload

    cf = r.opt.content_format
    fmt = _format_name(cf)
    size = len(r.payload)
    head = f"{r.code}, {fmt}, {size} bytes"
    block = r.opt.block2
    if block is not None and block.more:
        total = f" of {r.opt.size2}" if r.opt.size2 is not None else ""
        if r.opt.size2 is not None and r.opt.size2 > opts.max_payload_bytes:
            return "fail", f"{head}: first block{total} bytes, over max_payload_bytes={opts.max_payload_bytes}", \
                "raise max_payload_bytes or make the node send less"
        return "ok", f"{head}: first block{total} (block-wise; not decoded here)", ""
    if size > opts.max_payload_bytes:
        return "fail", f"{head}: over max_payload_bytes={opts.max_payload_bytes}, the driver drops it", \
            "raise max_payload_bytes or make the node send less"
    try:
        samples, errors = decode_payload(r.payload, cf, res, time.time(), opts.max_records)
    except senml.TooLarge as exc:
        return "fail", f"{head}: {exc}, the driver drops it", "raise max_records or make the node send less"
    key = None if cf is None else int(cf)
    what = _FORMATS.get(key, _FORMATS[None])  # the driver reads any other content-format as text
    if not samples and errors:
        if key not in _FORMATS:
            return "fail", f"{head}: content-format {key} is not one the driver reads (nor a number as text)", \
                COAP_FORMATS_FIX
        return "fail", f"{head}: not valid {what} for the driver, it reads nothing from it", COAP_FORMATS_FIX
    values = _count(len(samples), "value")
    if errors:
        return "warn", f"{head}, {values}; {_count(errors, 'part')} not valid {what}, dropped by the driver", \
            COAP_FORMATS_FIX
    if not samples:
        return "warn", f"{head}: no number in it, the driver publishes nothing", COAP_FORMATS_FIX
    return "ok", f"{head}, {values}", ""


def _format_name(cf) -> str:
    """``application/senml+json``, ``text/plain`` (without parameters), or ``content-format N``."""
    if cf is None:
        return "no content-format"
    media = getattr(cf, "media_type", None)
    return media.split(";")[0] if media else f"content-format {int(cf)}"


# --- clock ------------------------------------------------------------------------------------

def check_clock() -> Check:
    for probe in (_timedatectl, _chronyc, _adjtimex):
        result = probe()
        if result is not None:
            return result
    return Check("clock", "unknown", "no way to tell whether the clock is synchronised here",
                 "install and enable systemd-timesyncd or chrony")


def clock_wait_note(check: Check, wait_s: float | None) -> Check:
    """A clock not synchronised, told with what the config does about it at start: readings are held for up to
    ``gateway.clock_sync_wait_s``, or (0) go out stamped with this clock. ``wait_s`` None: no config."""
    if check.status != "fail" or wait_s is None:
        return check
    if wait_s > 0:
        return replace(check, detail=f"{check.detail}; at start the gateway holds readings until it is, at most "
                                     f"{wait_s:g} s (gateway.clock_sync_wait_s)")
    return replace(check, fix=f"{check.fix}; and set gateway.clock_sync_wait_s "
                              "(e.g. 900) so that readings wait for the sync instead of going out wrong-dated")


def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout if r.returncode == 0 else None


def _timedatectl() -> Check | None:
    out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if out is None or out.strip() not in ("yes", "no"):
        return None
    if out.strip() == "yes":
        return Check("clock", "ok", "synchronised (timedatectl)")
    return Check("clock", "fail", "not synchronised (timedatectl)",
                 "timedatectl set-ntp true; check that UDP 123 reaches an NTP server")


def _chronyc() -> Check | None:
    out = _run(["chronyc", "-n", "tracking"])
    if out is None:
        return None
    status = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Leap status")), "")
    if status == "Normal":
        return Check("clock", "ok", "synchronised (chronyc tracking)")
    return Check("clock", "fail", f"chrony leap status {status or 'unknown'}", "check `chronyc sources -v`")


def _adjtimex() -> Check | None:
    from .clocksync import TIME_ERROR, read_timex

    try:
        state, status, maxerror = read_timex()
    except (OSError, AttributeError):
        return None
    sta_unsync = 0x0040
    if state == TIME_ERROR or status & sta_unsync:
        return Check("clock", "fail", "kernel clock not synchronised (adjtimex: TIME_ERROR/STA_UNSYNC)",
                     "enable systemd-timesyncd or chrony; a gateway without RTC needs network time at boot")
    return Check("clock", "ok", f"kernel clock synchronised (adjtimex, max error {maxerror / 1000:.0f} ms)")


# --- daemon -----------------------------------------------------------------------------------

def check_daemon(sock_path: Path) -> Check:
    from . import control

    try:
        reply = control.request(sock_path, {"cmd": "status"}, timeout=3.0)
    except control.DaemonNotRunning:
        from .statelock import holder

        pid = holder(sock_path.parent)
        if pid is not None:
            return Check("daemon", "warn", f"starting (pid {pid}): compiling its analytics kernels, no control "
                         "socket yet", "wait; ask again with `edge-gateway status`")
        return Check("daemon", "unknown", f"not running (nothing on {sock_path})",
                     "systemctl start edge-gateway; `journalctl -u edge-gateway` says why it stopped")
    except OSError as exc:
        return Check("daemon", "unknown", f"{sock_path}: {exc}")
    s = reply.get("status", {})
    return Check("daemon", "ok", f"running, pid {s.get('pid')}, link {s.get('link')}, queue {s.get('queue_depth')}")
