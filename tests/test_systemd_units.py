"""The systemd units: required directives, hardening score, and MemoryDenyWriteExecute safety."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sync.config.daemon import Daemon
from sync.config.values import parse_interval

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
DAEMON_UNIT = SYSTEMD_DIR / "dvmirror.service"
BACKFILL_UNIT = SYSTEMD_DIR / "dvmirror-backfill@.service"
SYSUSERS = SYSTEMD_DIR / "dvmirror.sysusers.conf"
MAX_EXPOSURE = 2.0

HARDENING = {
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "DevicePolicy": "closed",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallArchitectures": "native",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "UMask": "0077",
    "ProcSubset": "pid",
    "ProtectProc": "invisible",
}


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections to (key, value) lists; keys may repeat, as systemd allows."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a directive: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def service(path: Path) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for key, value in parse_unit(path)["Service"]:
        values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("unit", [DAEMON_UNIT, BACKFILL_UNIT], ids=lambda p: p.name)
def test_units_carry_the_hardening(unit: Path) -> None:
    """Both units set every hardening directive, the dvmirror user, directories and credential."""
    directives = service(unit)
    for key, expected in HARDENING.items():
        assert directives.get(key) == [expected], key
    assert directives["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert directives["User"] == ["dvmirror"]
    assert directives["StateDirectory"] == ["dvmirror"]
    assert directives["ConfigurationDirectory"] == ["dvmirror"]
    assert directives["LoadCredential"] == ["client_secret:/etc/dvmirror/client_secret"]


def test_daemon_unit_lifecycle() -> None:
    """The daemon is Type=notify with a watchdog, reload by SIGHUP and a stop timeout > grace."""
    directives = service(DAEMON_UNIT)
    assert directives["Type"] == ["notify"]
    assert directives["ExecStart"] == [
        "/opt/dvmirror/bin/dvmirror --config /etc/dvmirror/dvmirror.toml run"
    ]
    assert directives["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert directives["Restart"] == ["on-failure"]
    assert parse_interval(directives["WatchdogSec"][0]) >= 30
    assert parse_interval(directives["TimeoutStopSec"][0]) > Daemon().shutdown_grace
    assert set(directives["RestartPreventExitStatus"][0].split()) == {"2", "3"}
    assert parse_unit(DAEMON_UNIT)["Install"] == [("WantedBy", "multi-user.target")]


def test_backfill_unit_runs_one_environment() -> None:
    """The template runs `backfill --env <instance>` once, with the daemon's hardening."""
    directives = service(BACKFILL_UNIT)
    assert directives["Type"][0] in {"exec", "oneshot"}
    assert directives["ExecStart"][0].endswith("backfill --env %i")
    assert "Restart" not in directives
    daemon = service(DAEMON_UNIT)
    shared = {k: v for k, v in daemon.items() if k in HARDENING or k == "SystemCallFilter"}
    assert shared == {k: v for k, v in directives.items() if k in shared}


def test_sysusers_declares_the_unit_user() -> None:
    """The sysusers.d entry creates the static user the units run as."""
    lines = [
        line.split()
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(fields[0], fields[1]) for fields in lines] == [("u", "dvmirror")]


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", [DAEMON_UNIT, BACKFILL_UNIT], ids=lambda p: p.name)
def test_exposure_is_low(unit: Path) -> None:
    """`systemd-analyze security --offline=yes` rates each unit at most 2.0."""
    assert exposure(unit) <= MAX_EXPOSURE


# Run in a child: refuse writable+executable memory for the whole process (Linux ≥ 6.3),
# the kernel's version of MemoryDenyWriteExecute=, then exercise the native dependencies.
_MDWE = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
"""
_DEPENDENCIES = """
import asyncio, datetime as dt, sqlite3, ssl, tempfile
from pathlib import Path
import jwt, orjson, pydantic
from aiohttp import ClientSession, web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from msal.oauth2cli.assertion import JwtAssertionCreator

key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = dt.datetime.now(dt.UTC)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256()))
tmp = Path(tempfile.mkdtemp())
(tmp / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption())
(tmp / "k.pem").write_bytes(pem)
JwtAssertionCreator(pem.decode(), "RS256", sha1_thumbprint="00" * 20).create_normal_assertion(
    "aud", "iss")
jwt.decode(jwt.encode({"a": 1}, key, "RS256"), key.public_key(), ["RS256"])
orjson.loads(orjson.dumps({"t": now, "x": [1.5, "é"]}))
pydantic.TypeAdapter(dict[str, int]).validate_python({"a": "1"})
db = sqlite3.connect(tmp / "x.db")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE t (a)")

async def https_round_trip():
    async def hello(_):
        return web.json_response({"ok": True})
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    port = runner.addresses[0][1]
    client_tls = ssl.create_default_context(cafile=str(tmp / "c.pem"))
    async with ClientSession() as session:
        async with session.get(f"https://localhost:{port}/", ssl=client_tls) as response:
            assert await response.json() == {"ok": True}
    await runner.cleanup()

asyncio.run(https_round_trip())
print("ok")
"""
_CFFI_CALLBACK = """
import cffi
cffi.FFI().callback("int(int)", lambda x: x)
"""


def run_under_mdwe(code: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", _MDWE + code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode == 77:
        pytest.skip("kernel has no PR_SET_MDWE (Linux < 6.3)")
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_MDWE is Linux-only")
def test_dependencies_run_without_writable_executable_memory() -> None:
    """TLS, JWT signing, MSAL assertions, orjson, pydantic and SQLite work under W^X."""
    result = run_under_mdwe(_DEPENDENCIES)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_MDWE is Linux-only")
def test_mdwe_check_catches_a_write_execute_user() -> None:
    """The same harness fails code that needs W+X memory (an old-style cffi callback)."""
    result = run_under_mdwe(_CFFI_CALLBACK)
    assert result.returncode != 0
    assert "write+execute" in result.stderr
