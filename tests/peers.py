"""Third-party Dataverse clients ("peers"), unmodified, against the simulator.

`peer_venv` installs one pinned peer into its own throwaway virtual environment, cached under
``$XDG_CACHE_HOME/dvmirror/peers/<name>-<version>/`` (``~/.cache`` by default). The marker file is
written last, so a half-finished install is rebuilt; a matching marker is reused as is.

A peer that hard-codes a public host (``https://login.microsoftonline.com/<tenant>``) runs in a
*sandbox*: ``python -m tests.peers sandbox --name HOST … -- SIMULATOR COMMAND`` is started under
``unshare --mount --net`` (root), so it and everything entered with `in_sandbox` see only their
own loopback and a hosts file mapping each name to 127.0.0.1. It starts the simulator inside,
forwards 127.0.0.1:443 to the simulated authority, bridges the admin API to a socket the test
made on the host's loopback (inherited fd), and prints the simulator's ready line with that
``admin_url`` and ``sandbox.pid``. The simulator's certificate covers the names
(``DVMIRROR_SIMULATOR_TLS_NAMES``); peers trust its CA through ``REQUESTS_CA_BUNDLE`` and, where
they ignore it, `trust_in_sandbox`. Nothing can leave the machine: the namespace has no
interface but ``lo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

INSTALL_TIMEOUT = 600.0
MARKER = "dvmirror-peer.json"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dvmirror" / "peers"


def peer_venv(name: str, version: str, requirements: Sequence[str]) -> Path:
    """The venv holding `requirements` (pinned), installed once and reused while it matches."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    directory = root / f"{name}-{version}"
    wanted = {
        "requirements": list(requirements),
        "python": sys.version,
        "base_prefix": sys.base_prefix,
    }
    with (root / f"{name}-{version}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs wait for one install
        marker = directory / MARKER
        with contextlib.suppress(OSError, ValueError):
            if json.loads(marker.read_text()) == wanted:
                return directory
        shutil.rmtree(directory, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=120)
        log = directory / "install.log"
        with log.open("wb") as output:
            done = subprocess.run(
                [
                    str(directory / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    *requirements,
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=INSTALL_TIMEOUT,
                check=False,
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"pip install {' '.join(requirements)} failed:\n{tail}")
        marker.write_text(json.dumps(wanted))
        return directory


# -- the sandbox ----------------------------------------------------------------------------


@contextlib.contextmanager
def sandboxed_simulator(
    scenario: str, state_dir: Path, names: Sequence[str]
) -> Iterator[dict[str, Any]]:
    """`running_simulator` inside a new sandbox where `names` resolve to the simulator."""
    from sync.simulator.tls import EXTRA_NAMES_VARIABLE
    from tests.simfixtures import running_simulator

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as admin_bridge:
        admin_bridge.bind(("127.0.0.1", 0))
        admin_bridge.listen(64)
        with running_simulator(
            scenario,
            state_dir,
            env={EXTRA_NAMES_VARIABLE: ",".join(names)},
            wrapper=sandbox_wrapper(names, admin_bridge),
            pass_fds=[admin_bridge.fileno()],
        ) as ready:
            yield ready


def sandbox_wrapper(names: Sequence[str], admin_socket: socket.socket) -> list[str]:
    """The command prefix that runs the simulator inside a new sandbox (see the module doc)."""
    return [
        "unshare",
        "--mount",
        "--net",
        "--",
        sys.executable,
        "-m",
        "tests.peers",
        "sandbox",
        *(f"--name={name}" for name in names),
        f"--admin-fd={admin_socket.fileno()}",
        "--",
    ]


def in_sandbox(ready: dict[str, Any], argv: Sequence[str | Path]) -> list[str]:
    """`argv` run inside the sandbox of the simulator whose ready line this is."""
    pid = ready["sandbox"]["pid"]
    return ["nsenter", f"--target={pid}", "--net", "--mount", "--", *map(str, argv)]


def trust_in_sandbox(ready: dict[str, Any], venv: Path) -> None:
    """Inside the sandbox only, the venv's certifi bundle is the simulator's CA.

    requests falls back to certifi when a session sends a prepared request (``Session.send``
    ignores ``REQUESTS_CA_BUNDLE``); replacing the trust store a client reads, in a private mount
    namespace, is how a machine is told to trust a CA. The files on disk stay as installed."""
    for bundle in sorted(venv.glob("lib/python*/site-packages/certifi/cacert.pem")):
        subprocess.run(
            in_sandbox(ready, ["mount", "--bind", ready["ca_file"], bundle]),
            check=True,
            timeout=30,
        )


def _loopback_up() -> None:
    """``ip link set lo up`` without iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS on ``lo``."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def _relay(port: int) -> Any:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))

    return handle


async def _serve_sandbox(
    child: subprocess.Popen[bytes], ready: dict[str, Any], admin_fd: int
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    authority_port = urlsplit(ready["authority_host"]).port
    admin_port = urlsplit(ready["admin_url"]).port
    assert authority_port is not None and admin_port is not None
    public = await asyncio.start_server(_relay(authority_port), "127.0.0.1", 443)
    host_admin = socket.socket(fileno=admin_fd)
    bridge = await asyncio.start_server(_relay(admin_port), sock=host_admin)
    host, port = host_admin.getsockname()[:2]
    ready = {**ready, "admin_url": f"http://{host}:{port}", "sandbox": {"pid": os.getpid()}}
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    watcher = asyncio.create_task(asyncio.to_thread(child.wait))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({watcher, stopping}, return_when=asyncio.FIRST_COMPLETED)
    public.close()
    bridge.close()
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    await watcher


def sandbox_main(argv: Sequence[str]) -> int:
    """Inside a fresh mount+net namespace: loopback up, hosts file, run and relay the simulator."""
    parser = argparse.ArgumentParser(prog="python -m tests.peers sandbox")
    parser.add_argument("--name", action="append", default=[])
    parser.add_argument("--admin-fd", type=int, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    # a SIGTERM while the simulator starts still stops it (SystemExit runs the finally below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    _loopback_up()
    with tempfile.TemporaryDirectory(prefix="dvmirror-sandbox-") as scratch:
        hosts = Path(scratch) / "hosts"
        lines = ["127.0.0.1 localhost", "::1 localhost", *(f"127.0.0.1 {n}" for n in args.name)]
        hosts.write_text("\n".join(lines) + "\n")
        # unshare --mount makes mounts private: the host's /etc/hosts is untouched
        subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)
        child = subprocess.Popen(command, stdout=subprocess.PIPE)
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            if not line:
                return child.wait()
            asyncio.run(_serve_sandbox(child, json.loads(line), args.admin_fd))
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["sandbox"]:
        sys.exit("usage: python -m tests.peers sandbox --name HOST --admin-fd FD -- COMMAND…")
    sys.exit(sandbox_main(sys.argv[2:]))
