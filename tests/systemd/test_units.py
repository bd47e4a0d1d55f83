"""The systemd unit, sysusers.d and tmpfiles.d files, checked by systemd's own tools.

- ``systemd-analyze verify`` must print nothing at all for the unit.
- ``systemd-analyze security --offline=yes`` must rate it at an exposure of 2.0 or less.
- ``systemd-sysusers`` and ``systemd-tmpfiles`` build the install layout in a scratch root.
- The daemon's runtime (LiteRT with XNNPACK, OpenCV, numpy, ctypes, sqlite, asyncio sockets,
  serial I/O, a worker process, sd_notify) runs inside the same system-call filter, W^X memory
  rule, address-family list and /proc mount options the unit asks systemd for. The filter is
  rebuilt here with libseccomp from the unit's own settings, with the system-call groups expanded
  by ``systemd-analyze syscall-filter``, so a library that starts needing a filtered call (or
  writable+executable memory, or /proc/cpuinfo) fails this test instead of a gate in the field.
"""

from __future__ import annotations

import ctypes.util
import errno
import json
import mmap
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = ROOT / "systemd"
UNIT = SYSTEMD_DIR / "smartgate.service"
SYSUSERS = SYSTEMD_DIR / "sysusers.d" / "smartgate.conf"
TMPFILES = SYSTEMD_DIR / "tmpfiles.d" / "smartgate.conf"
EXAMPLE_CONFIG = ROOT / "config" / "smartgate.example.yaml"

SHIPPED_BINARY = "/opt/smartgate/bin/smartgate"
SHIPPED_EXEC_START = f"{SHIPPED_BINARY} run -c /etc/smartgate/smartgate.yaml"
MAX_EXPOSURE = 2.0
SPEC_ENV = "SMARTGATE_SANDBOX_SPEC"

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="creating users and chown-ing a scratch root needs root")


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value assigned, in order (systemd keeps lists for repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path}:{number}: keep settings on one line"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}:{number}: setting outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}:{number}: not KEY=VALUE"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return parse_unit(UNIT)["Service"]


def last(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key)
    assert values, f"{key}= is not set"
    return values[-1]


def timespan_s(span: str) -> float:
    """A systemd time span in seconds, parsed by systemd itself."""
    out = subprocess.run(["systemd-analyze", "timespan", span], capture_output=True, text=True, check=True).stdout
    match = re.search(r"μs:\s*(\d+)", out)
    assert match, out
    return int(match.group(1)) / 1_000_000


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, env=env, timeout=60, check=False)


# --------------------------------------------------------------------------- systemd-analyze verify


@needs_analyze
def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    """`systemd-analyze verify` prints nothing for the unit.

    verify also checks that ExecStart='s program exists, and /opt/smartgate/bin/smartgate exists
    only on an installed gate. So the unit is verified as a copy whose ExecStart program alone is
    replaced by /bin/true (same arguments, every other line byte for byte identical); the
    original is verified too, where the only output allowed is that one missing-program line.
    """
    text = UNIT.read_text(encoding="utf-8")
    assert service()["ExecStart"] == [SHIPPED_EXEC_START]
    copy_text = text.replace(f"ExecStart={SHIPPED_BINARY} ", "ExecStart=/bin/true ")
    assert copy_text.count("/bin/true") == 1
    assert SHIPPED_BINARY not in copy_text
    copy = tmp_path / UNIT.name
    copy.write_text(copy_text, encoding="utf-8")

    result = analyze("verify", str(copy))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")

    original = analyze("verify", str(UNIT))
    lines = [line for line in (original.stdout + original.stderr).splitlines() if line.strip()]
    if not Path(SHIPPED_BINARY).exists():
        expected = f"smartgate.service: Command {SHIPPED_BINARY} is not executable: No such file or directory"
        assert expected in lines
        lines.remove(expected)
    assert lines == []


@needs_analyze
def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    """The verify check above is not vacuous: a typo in a setting is a warning."""
    broken = UNIT.read_text(encoding="utf-8").replace(f"ExecStart={SHIPPED_BINARY} ", "ExecStart=/bin/true ")
    broken = broken.replace("ProtectSystem=strict", "ProtectSystem=strict\nProtectSytem=yes")
    copy = tmp_path / UNIT.name
    copy.write_text(broken, encoding="utf-8")
    result = analyze("verify", str(copy))
    assert "ProtectSytem" in result.stdout + result.stderr


# --------------------------------------------------------------------------- systemd-analyze security

# Checks that must stay green whatever the overall score: losing one of these is a regression
# even if the total still passes.
MUST_PASS = (
    "User=/DynamicUser=",
    "NoNewPrivileges=",
    "CapabilityBoundingSet=~CAP_SYS_ADMIN",
    "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)",
    "AmbientCapabilities=",
    "ProtectSystem=",
    "ProtectHome=",
    "PrivateUsers=",
    "PrivateMounts=",
    "PrivateTmp=",
    "ProtectProc=",
    "ProtectKernelTunables=",
    "ProtectKernelModules=",
    "ProtectKernelLogs=",
    "ProtectControlGroups=",
    "ProtectClock=",
    "ProtectHostname=",
    "SystemCallFilter=~@privileged",
    "SystemCallFilter=~@resources",
    "SystemCallFilter=~@mount",
    "SystemCallFilter=~@debug",
    "SystemCallArchitectures=",
    "MemoryDenyWriteExecute=",
    "RestrictAddressFamilies=~AF_NETLINK",
    "RestrictAddressFamilies=~AF_PACKET",
    "RestrictAddressFamilies=~…",
    "RestrictNamespaces=~user",
    "RestrictRealtime=",
    "RestrictSUIDSGID=",
    "LockPersonality=",
    "NotifyAccess=",
    "UMask=",
)


@needs_analyze
def test_security_exposure_is_at_most_two() -> None:
    result = analyze("security", "--offline=yes", "--no-pager", f"--threshold={round(MAX_EXPOSURE * 10)}", str(UNIT))
    match = re.search(r"Overall exposure level for smartgate\.service:\s*([0-9]+\.[0-9]+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE
    assert result.returncode == 0, result.stdout[-2000:]

    verdicts = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("✓", "✗"):
            verdicts[parts[1]] = parts[0]
    failing = [name for name in MUST_PASS if verdicts.get(name) != "✓"]
    assert not failing, f"security checks no longer passing: {failing}"


# --------------------------------------------------------------------------- unit <-> daemon


def _relative_secret_files(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.endswith("_file") and isinstance(value, str) and not value.startswith("/"):
                found.add(value)
            else:
                found |= _relative_secret_files(value)
    elif isinstance(node, list):
        for item in node:
            found |= _relative_secret_files(item)
    return found


def test_unit_agrees_with_the_daemon_and_its_configuration() -> None:
    from gate_controller.cli import EX_CONFIG
    from gate_controller.config import ControlConfig, StorageConfig

    unit = parse_unit(UNIT)
    svc = unit["Service"]
    assert last(svc, "Type") == "notify"
    assert last(svc, "NotifyAccess") == "main"
    assert last(svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert last(svc, "Restart") == "on-failure"
    assert str(EX_CONFIG) in last(svc, "RestartPreventExitStatus").split()
    # Start-rate limits belong in [Unit]; in [Service] systemd 252 only accepts them for compatibility.
    for key in ("StartLimitIntervalSec", "StartLimitBurst"):
        assert key in unit["Unit"]
        assert key not in svc

    # The daemon pings at half the watchdog interval; a stop must leave room for a safe shutdown.
    assert timespan_s(last(svc, "WatchdogSec")) >= 10
    assert timespan_s(last(svc, "TimeoutStopSec")) >= 30

    assert last(svc, "User") == "smartgate"
    assert "dialout" in last(svc, "SupplementaryGroups").split()

    # Every relative *_file secret of the example config is a credential of the same name.
    example = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    credentials = dict(value.split(":", 1) for value in svc["LoadCredential"])
    assert set(credentials) == _relative_secret_files(example)
    for name, source in credentials.items():
        assert source == f"/etc/smartgate/credentials/{name}"

    # The directories systemd creates are the ones the daemon uses by default.
    config_path = Path(SHIPPED_EXEC_START.split(" -c ", 1)[1])
    assert config_path.parent == Path("/etc") / last(svc, "ConfigurationDirectory")
    assert StorageConfig.model_fields["state_dir"].default == Path("/var/lib") / last(svc, "StateDirectory")
    socket_path = ControlConfig.model_fields["socket_path"].default
    assert socket_path.parent == Path("/run") / last(svc, "RuntimeDirectory")

    # Serial ports stay reachable: no PrivateDevices=, the tty classes allowed read-write.
    assert svc.get("PrivateDevices", ["no"])[-1] == "no"
    assert last(svc, "DevicePolicy") == "closed"
    allowed = set(svc["DeviceAllow"])
    assert {"char-ttyS rw", "char-ttyUSB rw", "char-ttyACM rw"} <= allowed
    assert set(last(svc, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert last(svc, "ProtectSystem") == "strict"
    assert last(svc, "CapabilityBoundingSet") == ""


# --------------------------------------------------------------------------- sysusers.d / tmpfiles.d


def _table(path: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        rows[fields[0]] = fields
    return rows


@needs_root
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers not installed")
def test_sysusers_and_tmpfiles_build_the_install_layout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    (root / "usr/lib/tmpfiles.d").mkdir(parents=True)
    # A Debian base system's accounts: dialout is gid 20 there.
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\ndialout:*::\n")
    shutil.copy(SYSUSERS, root / "usr/lib/sysusers.d/smartgate.conf")
    shutil.copy(TMPFILES, root / "usr/lib/tmpfiles.d/smartgate.conf")

    created = subprocess.run(["systemd-sysusers", f"--root={root}"], capture_output=True, text=True, check=False)
    assert created.returncode == 0, created.stderr
    users, groups = _table(root / "etc/passwd"), _table(root / "etc/group")
    name, _, uid, gid, gecos, home, shell = users["smartgate"]
    assert int(uid) < 1000, "a system account"
    assert (gecos, home, shell) == ("smartgate gate daemon", "/var/lib/smartgate", "/usr/sbin/nologin")
    assert groups["smartgate"][2] == gid
    assert groups["dialout"][2] == "20"
    assert "smartgate" in groups["dialout"][3].split(",")
    assert last(service(), "User") == name

    for _ in range(2):  # idempotent: a package upgrade runs it again
        made = subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}"],
                              capture_output=True, text=True, check=False)
        assert made.returncode == 0, made.stderr
    expected = {
        "etc/smartgate": (0o750, 0, int(gid)),
        "etc/smartgate/tls": (0o750, 0, int(gid)),
        "etc/smartgate/credentials": (0o700, 0, 0),
        "var/lib/smartgate": (0o750, int(uid), int(gid)),
    }
    for relative, (mode, owner, group) in expected.items():
        info = (root / relative).stat()
        assert stat.S_ISDIR(info.st_mode), relative
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, owner, group), relative

    # systemd re-applies these at every start; they must agree with tmpfiles.d, or the two fight.
    svc = service()
    assert int(last(svc, "StateDirectoryMode"), 8) == expected["var/lib/smartgate"][0]
    assert int(last(svc, "ConfigurationDirectoryMode"), 8) == expected["etc/smartgate"][0]


def test_tmpfiles_and_sysusers_lines_are_well_formed() -> None:
    """Field counts and types, for machines without the systemd tools."""
    for line in _config_lines(SYSUSERS):
        fields = _split_quoted(line)
        assert fields[0] in ("u", "g", "m", "r"), line
        assert len(fields) <= 7, line
    for line in _config_lines(TMPFILES):
        fields = line.split()
        assert len(fields) == 6, line
        kind, path, mode, _user, _group, age = fields
        assert kind == "d", line
        assert path.startswith("/"), line
        assert re.fullmatch(r"0[0-7]{3}", mode), line
        assert age == "-", line


def _config_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]


def _split_quoted(line: str) -> list[str]:
    return [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', line)]


# --------------------------------------------------------------------------- the sandbox, for real


def _syscalls(names: Iterable[str], cache: dict[str, set[str]]) -> set[str]:
    """System-call names with ``@group`` references expanded by systemd-analyze."""
    out: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            out.add(name)
            continue
        if name not in cache:
            listing = analyze("syscall-filter", "--no-pager", name)
            assert listing.returncode == 0, listing.stderr
            members = [line.strip() for line in listing.stdout.splitlines()[1:]]
            cache[name] = _syscalls((m for m in members if m and not m.startswith("#")), cache)
        out |= cache[name]
    return out


def sandbox_spec() -> dict[str, Any]:
    """What the unit asks of seccomp and /proc, in a form the launcher below can apply."""
    svc = service()
    cache: dict[str, set[str]] = {}
    allow: set[str] | None = None
    deny: set[str] = set()
    for value in svc["SystemCallFilter"]:
        if value.startswith("~"):
            deny |= _syscalls(value[1:].split(), cache)
        else:
            if allow is None:  # systemd adds @default to every allow list
                allow = _syscalls(["@default"], cache)
            allow |= _syscalls(value.split(), cache)
    assert allow is not None, "SystemCallFilter= must start with an allow list"
    # Settings that imply further denials (systemd.exec(5)).
    implied = {"ProtectClock": ["@clock"], "ProtectKernelModules": ["@module"], "ProtectKernelLogs": ["syslog"]}
    for key, groups in implied.items():
        if svc.get(key, ["no"])[-1] == "yes":
            deny |= _syscalls(groups, cache)
    hidepid = svc.get("ProtectProc", ["default"])[-1]
    subset = svc.get("ProcSubset", ["all"])[-1]
    proc_options = [f"hidepid={hidepid}"] if hidepid != "default" else []
    if subset == "pid":
        proc_options.append("subset=pid")
    return {
        "allow": sorted(allow - deny),
        "deny_sample": sorted(deny & {"setpriority", "sched_setaffinity", "setuid", "mount", "settimeofday"}),
        "errno": getattr(errno, last(svc, "SystemCallErrorNumber")),
        "families": [int(getattr(socket, name)) for name in last(svc, "RestrictAddressFamilies").split()],
        "mdwe": svc.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes",
        "proc_options": proc_options,
    }


# Runs in the child before the probe: installs the filters the way systemd does just before
# execve() (address families and W^X first, the allow list last, as it also blocks seccomp()),
# then execs the probe so that the interpreter's own startup is filtered too.
LAUNCHER = r"""
import ctypes, ctypes.util, json, os, sys
spec = json.loads(os.environ["SMARTGATE_SANDBOX_SPEC"])
lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [
    ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_release.argtypes = [ctypes.c_void_p]
ALLOW = 0x7FFF0000
def ERRNO(e): return 0x00050000 | (e & 0xFFFF)
NE, EQ, GE, MASKED_EQ = 1, 4, 5, 7
def rule(ctx, action, name, *cmps):
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:  # not a system call of this architecture
        return
    arr = (Cmp * len(cmps))(*cmps) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
    if rc < 0:
        raise OSError(-rc, f"seccomp rule for {name}")
def load(ctx):
    rc = lib.seccomp_load(ctx)
    lib.seccomp_release(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
if spec["mdwe"]:  # MemoryDenyWriteExecute=yes, as systemd's seccomp_memory_deny_write_execute()
    ctx = lib.seccomp_init(ALLOW)
    rule(ctx, ERRNO(1), "mmap", Cmp(2, MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
    rule(ctx, ERRNO(1), "mprotect", Cmp(2, MASKED_EQ, PROT_EXEC, PROT_EXEC))
    rule(ctx, ERRNO(1), "pkey_mprotect", Cmp(2, MASKED_EQ, PROT_EXEC, PROT_EXEC))
    rule(ctx, ERRNO(1), "shmat", Cmp(2, MASKED_EQ, SHM_EXEC, SHM_EXEC))
    load(ctx)
ctx = lib.seccomp_init(ALLOW)  # RestrictAddressFamilies= (an allow list): socket() only
for family in range(64):
    if family not in spec["families"]:
        rule(ctx, ERRNO(97), "socket", Cmp(0, EQ, family, 0))
rule(ctx, ERRNO(97), "socket", Cmp(0, GE, 64, 0))
load(ctx)
ctx = lib.seccomp_init(ERRNO(spec["errno"]))  # SystemCallFilter= with SystemCallErrorNumber=
for name in spec["allow"]:
    rule(ctx, ALLOW, name)
load(ctx)
os.execv(sys.executable, [sys.executable, "-c", "from tests.systemd.test_units import run_probe; run_probe()"])
"""


def _tiny_conv_model() -> bytes:
    """A one-convolution float model: enough for LiteRT to apply its XNNPACK delegate."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    def tensor(name: str, shape: tuple[int, ...], buffer: int) -> Any:
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), list(shape), schema.TensorType.FLOAT32, buffer
        return t

    def buffer(values: Any = None) -> Any:
        b = schema.BufferT()
        if values is not None:
            b.data = np.frombuffer(np.asarray(values, dtype=np.float32).tobytes(), dtype=np.uint8)
        return b

    rng = np.random.default_rng(6346)
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CONV_2D
    code.version = 1
    options = schema.Conv2DOptionsT()
    options.padding, options.strideW, options.strideH = schema.Padding.VALID, 1, 1
    options.fusedActivationFunction = schema.ActivationFunctionType.RELU
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.Conv2DOptions, options
    graph = schema.SubGraphT()
    graph.tensors = [tensor("scan", (1, 64, 64, 2), 0), tensor("w", (8, 3, 3, 2), 1),
                     tensor("b", (8,), 2), tensor("features", (1, 62, 62, 8), 0)]
    graph.inputs, graph.outputs, graph.operators = [0], [3], [op]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [buffer(), buffer(rng.standard_normal((8, 3, 3, 2))), buffer(rng.standard_normal(8))]
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _square_sum(n: int) -> int:
    import numpy as np

    return int((np.arange(n, dtype=np.int64) ** 2).sum())


def run_probe() -> None:
    """The daemon's runtime, exercised inside the sandbox; prints one JSON report on stdout."""
    import asyncio
    import concurrent.futures
    import multiprocessing
    import resource
    import sqlite3
    import ssl
    import tempfile
    import threading

    spec = json.loads(os.environ[SPEC_ENV])
    scratch = Path(tempfile.mkdtemp(prefix="sandbox-probe-"))

    def litert() -> object:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=_tiny_conv_model(), num_threads=2)
        interpreter.allocate_tensors()
        # The op list shows whether XNNPACK took the graph (a DELEGATE node); there is no public API.
        ops = [op["op_name"] for op in interpreter._get_ops_details()]
        (inp,) = interpreter.get_input_details()
        interpreter.set_tensor(inp["index"], np.ones(inp["shape"], np.float32))
        interpreter.invoke()
        out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        return {"ops": ops, "shape": list(out.shape)}

    def opencv() -> object:
        import cv2
        import numpy as np

        cv2.setNumThreads(2)
        image = (np.arange(512 * 2048, dtype=np.uint32) % 65521).astype(np.uint16).reshape(512, 2048)
        small = cv2.resize(image, (1024, 256), interpolation=cv2.INTER_AREA)
        blurred = cv2.GaussianBlur(small, (5, 5), 0)
        ok, jpeg = cv2.imencode(".jpg", (blurred >> 8).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 80])
        assert ok
        return len(jpeg)

    def numpy_threads() -> object:
        import numpy as np

        a = np.random.default_rng(1).standard_normal((400, 400))
        results: list[float] = []
        workers = [threading.Thread(target=lambda: results.append(float((a @ a).trace()))) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return len(results)

    def ctypes_callback() -> object:
        libc = ctypes.CDLL(None)
        values = (ctypes.c_int * 5)(5, 1, 4, 2, 3)
        compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))(
            lambda x, y: x[0] - y[0])
        libc.qsort(values, len(values), ctypes.sizeof(ctypes.c_int), compare)
        return list(values)

    def sqlite_wal() -> object:
        with sqlite3.connect(scratch / "outbox.db") as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, body BLOB)")
            db.executemany("INSERT INTO outbox (body) VALUES (?)", [(os.urandom(64),) for _ in range(50)])
        with sqlite3.connect(scratch / "outbox.db") as db:
            return db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def asyncio_sockets() -> object:
        async def main() -> object:
            async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                writer.write(await reader.readline())
                await writer.drain()
                writer.close()

            answers = []
            tcp = await asyncio.start_server(echo, "127.0.0.1", 0)
            unix = await asyncio.start_unix_server(echo, path=str(scratch / "control.sock"))
            async with tcp, unix:
                port = tcp.sockets[0].getsockname()[1]
                for opener in (lambda: asyncio.open_connection("127.0.0.1", port),
                               lambda: asyncio.open_unix_connection(str(scratch / "control.sock"))):
                    reader, writer = await opener()
                    writer.write(b"ping\n")
                    answers.append(await reader.readline())
                    writer.close()
                    await writer.wait_closed()
                answers.append(str(await asyncio.get_running_loop().run_in_executor(None, _square_sum, 10)).encode())
            return [a.decode().strip() for a in answers]

        return asyncio.run(main())

    def name_resolution() -> object:
        infos = socket.getaddrinfo("localhost", 1883, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG)
        return sorted({info[0].name for info in infos})

    def tls_context() -> object:
        context = ssl.create_default_context()
        return context.verify_mode == ssl.CERT_REQUIRED

    def serial_port() -> object:
        import serial

        controller, device = os.openpty()
        try:
            port = serial.serial_for_url(os.ttyname(device), baudrate=921600, timeout=1.0)
            with port:
                port.write(b"\x02GFP")
                return os.read(controller, 4).hex()
        finally:
            os.close(controller)
            os.close(device)

    def worker_process() -> object:
        context = multiprocessing.get_context("forkserver")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(_square_sum, 1000).result(timeout=60)

    def own_usage() -> object:
        status = Path("/proc/self/status").read_text()
        rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        disk = os.statvfs(scratch)
        return rss_kb > 0 and usage.ru_utime >= 0 and disk.f_bavail > 0 and len(os.sched_getaffinity(0)) > 0

    def notify_ready() -> object:
        from gate_controller.service import sdnotify

        return sdnotify.ready("sandbox probe done")

    # Proof the sandbox is really on: these must be refused.
    def wx_mapping() -> object:
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
        except OSError as err:
            return err.errno
        return 0

    def netlink_socket() -> object:
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()
        except OSError as err:
            return err.errno
        return 0

    def denied_syscalls() -> object:
        refused = {}
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        for name, call in (("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, niceness)),
                           ("sched_setaffinity", lambda: os.sched_setaffinity(0, os.sched_getaffinity(0)))):
            try:
                call()
            except OSError as err:
                refused[name] = err.errno
            else:
                refused[name] = 0
        return refused

    checks: list[tuple[str, Callable[[], object]]] = [
        ("litert", litert), ("opencv", opencv), ("numpy_threads", numpy_threads),
        ("ctypes_callback", ctypes_callback), ("sqlite_wal", sqlite_wal), ("asyncio_sockets", asyncio_sockets),
        ("name_resolution", name_resolution), ("tls_context", tls_context), ("serial_port", serial_port),
        ("worker_process", worker_process), ("own_usage", own_usage), ("notify_ready", notify_ready),
        ("wx_mapping", wx_mapping), ("netlink_socket", netlink_socket), ("denied_syscalls", denied_syscalls),
    ]
    report: dict[str, object] = {"proc_cpuinfo": Path("/proc/cpuinfo").exists(), "spec_mdwe": spec["mdwe"]}
    for name, check in checks:
        try:
            report[name] = {"ok": True, "value": check()}
        except Exception as err:  # every failure is reported; none stops the probe
            report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report))


@needs_analyze
@pytest.mark.skipif(ctypes.util.find_library("seccomp") is None, reason="libseccomp not installed")
def test_daemon_runtime_works_inside_the_unit_sandbox(tmp_path: Path) -> None:
    spec = sandbox_spec()
    notify_path = tmp_path / "notify"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    manager.bind(str(notify_path))
    env = {**os.environ, SPEC_ENV: json.dumps(spec), "NOTIFY_SOCKET": str(notify_path),
           "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-c", LAUNCHER]
    if os.geteuid() == 0 and shutil.which("unshare") and spec["proc_options"]:
        # ProtectProc=/ProcSubset=: a private /proc mount with the same options, in a mount
        # namespace of the probe's own (nothing changes for the rest of the machine).
        options = ",".join(spec["proc_options"])
        command = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                   f'mount -t proc -o {options} proc /proc && exec "$@"', "sh", *command]
    with manager:
        with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as probe:
            stdout, stderr = probe.communicate(timeout=180)
        assert probe.returncode == 0, stderr[-4000:]
        report = json.loads(stdout.strip().splitlines()[-1])
        print(json.dumps(report, indent=1))
        failed = {name: value for name, value in report.items() if isinstance(value, dict) and not value["ok"]}
        assert not failed, f"{failed}\n{stderr[-2000:]}"

        manager.settimeout(5)
        data, ancdata, _, _ = manager.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
    assert data == b"READY=1\nSTATUS=sandbox probe done"
    sender = [struct.unpack("3i", payload[:12])[0] for level, kind, payload in ancdata
              if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS]
    assert sender == [probe.pid]  # the launcher exec()s the probe in place: same process

    # LiteRT must still find the CPU features it needs: XNNPACK delegated the graph.
    assert report["litert"]["value"]["ops"] == ["CONV_2D", "DELEGATE"], report["litert"]
    assert "Error in cpuinfo" not in stderr
    assert report["ctypes_callback"]["value"] == [1, 2, 3, 4, 5]
    assert report["asyncio_sockets"]["value"] == ["ping", "ping", "285"]
    assert report["worker_process"]["value"] == _square_sum(1000)
    assert report["notify_ready"]["value"] is True

    # And the sandbox was really on.
    assert report["netlink_socket"]["value"] == errno.EAFNOSUPPORT
    assert report["wx_mapping"]["value"] == (errno.EPERM if spec["mdwe"] else 0)
    probed = ("setpriority", "sched_setaffinity")
    expected_refusals = {name: spec["errno"] for name in probed if name in spec["deny_sample"]}
    assert report["denied_syscalls"]["value"] == {"setpriority": 0, "sched_setaffinity": 0, **expected_refusals}
    assert expected_refusals, "the unit no longer denies @resources; update this test deliberately"
