"""Peer: Airbyte's Microsoft Dataverse source (airbyte-source-microsoft-dataverse 1.0.2),
unmodified, run as its command line and read through its Airbyte protocol output (JSON lines).

The connector hard-codes ``https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token``, so it
runs in the sandbox of tests/peers.py: a private network namespace with nothing but loopback,
where that name resolves to 127.0.0.1, port 443 reaches the simulated authority and the
simulator's certificate covers the name. It trusts the simulator's CA through
``REQUESTS_CA_BUNDLE`` (its token and metadata requests) and, because its stream reads use
``Session.send`` which ignores that variable, through a sandbox-only view of its certifi bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import clean_env
from tests.peers import in_sandbox, peer_venv, sandboxed_simulator, trust_in_sandbox
from tests.simfixtures import admin, admin_rows, environment

pytestmark = [pytest.mark.peers, pytest.mark.timeout(600)]

CONNECTOR = "airbyte-source-microsoft-dataverse"
VERSION = "1.0.2"
AUTHORITY = "login.microsoftonline.com"
ENV = "contoso_prod"
PAGE = 70


@pytest.fixture(scope="module", name="connector")
def _connector() -> Path:
    return peer_venv(CONNECTOR, VERSION, [f"{CONNECTOR}=={VERSION}"])


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory, connector: Path) -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.fail("the Airbyte peer needs root and util-linux (unshare, nsenter) for its sandbox")
    with sandboxed_simulator(
        "basic", tmp_path_factory.mktemp("peer-airbyte"), [AUTHORITY]
    ) as ready:
        trust_in_sandbox(ready, connector)
        yield ready


@pytest.fixture(scope="module", name="config")
def _config(sim: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The connector's configuration (its spec.yaml keys) for one simulated environment."""
    env = environment(sim, ENV)
    path = tmp_path_factory.mktemp("airbyte-config") / "config.json"
    path.write_text(
        json.dumps(
            {
                "url": env["url"],
                "tenant_id": env["tenant"]["tenant_id"],
                "client_id": sim["client_id"],
                "client_secret_value": sim["client_secret"],
                "odata_maxpagesize": PAGE,
            }
        )
    )
    path.chmod(0o600)
    return path


def airbyte(
    sim: dict[str, Any], connector: Path, *args: str | Path
) -> tuple[int, list[dict[str, Any]]]:
    """Run `source-microsoft-dataverse ARGS…` in the sandbox; its exit code and messages."""
    done = subprocess.run(
        in_sandbox(sim, [connector / "bin" / "source-microsoft-dataverse", *args]),
        capture_output=True,
        text=True,
        env=clean_env({"REQUESTS_CA_BUNDLE": sim["ca_file"]}),
        timeout=300,
        check=False,
    )
    messages = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, messages


def failures(messages: list[dict[str, Any]]) -> list[str]:
    """The connector's error traces and error logs, first lines only, for assertion messages."""
    errors = [
        t["error"]["internal_message"] or t["error"]["message"]
        for t in of_type(messages, "TRACE")
        if t["type"] == "ERROR"
    ]
    errors += [
        log["message"] for log in of_type(messages, "LOG") if log["level"] in ("ERROR", "FATAL")
    ]
    return [str(e).splitlines()[0][:500] for e in errors]


def of_type(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The payloads of one message type (RECORD → "record", CONNECTION_STATUS → …)."""
    field = "connectionStatus" if kind == "CONNECTION_STATUS" else kind.lower()
    return [m[field] for m in messages if m["type"] == kind]


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """A record without OData annotations and Airbyte's CDC columns (what the admin dump holds)."""
    return {k: v for k, v in row.items() if "@" not in k and not k.startswith("_ab_cdc_")}


def rows_by_id(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: plain(row) for row in rows}


@pytest.fixture(scope="module", name="streams")
def _streams(sim: dict[str, Any], connector: Path, config: Path) -> dict[str, dict[str, Any]]:
    """The streams `discover` reports, by name."""
    code, messages = airbyte(sim, connector, "discover", "--config", config)
    assert code == 0, failures(messages)
    (catalog,) = of_type(messages, "CATALOG")
    return {stream["name"]: stream for stream in catalog["streams"]}


def configured(stream: dict[str, Any], directory: Path, *, incremental: bool = False) -> Path:
    """A configured catalog with one discovered stream, full refresh or incremental."""
    entry: dict[str, Any] = {
        "stream": stream,
        "sync_mode": "incremental" if incremental else "full_refresh",
        "destination_sync_mode": "append_dedup" if incremental else "overwrite",
        "primary_key": stream["source_defined_primary_key"],
    }
    if incremental:
        entry["cursor_field"] = stream["default_cursor_field"]
    path = directory / f"catalog-{stream['name']}-{entry['sync_mode']}.json"
    path.write_text(json.dumps({"streams": [entry]}))
    return path


def read(
    sim: dict[str, Any], connector: Path, config: Path, catalog: Path, state: Path | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`read`: the records' data and the state messages."""
    args: list[str | Path] = ["read", "--config", config, "--catalog", catalog]
    if state is not None:
        args += ["--state", state]
    code, messages = airbyte(sim, connector, *args)
    assert code == 0, failures(messages)
    assert not failures(messages)
    return [r["data"] for r in of_type(messages, "RECORD")], of_type(messages, "STATE")


PROBE = """
import json, socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
with socket.create_connection(("login.microsoftonline.com", 443), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname="login.microsoftonline.com") as tls:
        verified = tls.version() is not None
print(json.dumps({
    "interfaces": [name for _, name in socket.if_nameindex()],
    "address": socket.gethostbyname("login.microsoftonline.com"),
    "verified": verified,
}))
"""


def test_sandbox_has_only_loopback_and_the_authority_name_reaches_the_simulator(
    sim: dict[str, Any],
) -> None:
    """In the sandbox the only network interface is lo, login.microsoftonline.com resolves to
    127.0.0.1, and port 443 there is the simulator with a certificate verified for that name."""
    done = subprocess.run(
        in_sandbox(sim, [sys.executable, "-c", PROBE, sim["ca_file"]]),
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "interfaces": ["lo"],
        "address": "127.0.0.1",
        "verified": True,
    }


def test_check_signs_in_and_reaches_the_environment(
    sim: dict[str, Any], connector: Path, config: Path
) -> None:
    """`check` gets a token from login.microsoftonline.com (the simulator, in the sandbox) and
    reaches the environment's service document: the connection status is SUCCEEDED."""
    code, messages = airbyte(sim, connector, "check", "--config", config)
    assert code == 0, failures(messages)
    assert of_type(messages, "CONNECTION_STATUS") == [{"status": "SUCCEEDED"}]


def test_discover_lists_every_table_with_keys_cursors_and_datetime_behaviors(
    sim: dict[str, Any], streams: dict[str, dict[str, Any]]
) -> None:
    """`discover` (EntityDefinitions with Attributes, then a $batch of DateTimeBehavior queries)
    lists each table with its primary key, incremental sync on change-tracked tables with the
    modifiedon cursor, and DateOnly columns as dates while other DateTime columns stay
    timestamps whatever their display format."""
    assert set(streams) == set(environment(sim, ENV)["tables"]) == {"account", "contact"}
    contact = streams["contact"]
    assert contact["source_defined_primary_key"] == [["contactid"]]
    assert contact["supported_sync_modes"] == ["full_refresh", "incremental"]
    assert contact["default_cursor_field"] == ["modifiedon"]
    columns = contact["json_schema"]["properties"]
    assert columns["birthdate"] == {"type": ["null", "string"], "format": "date"}
    timestamp = {
        "type": ["null", "string"],
        "format": "date-time",
        "airbyte_type": "timestamp_with_timezone",
    }
    assert columns["modifiedon"] == columns["overriddencreatedon"] == timestamp
    # Lookup columns are discovered under their Web API names; the connector does this for
    # AttributeType Lookup only, so Customer and Owner columns keep their logical names
    # (parentcustomerid, ownerid) while its rows carry _parentcustomerid_value, _ownerid_value.
    assert columns["_transactioncurrencyid_value"] == {"type": ["null", "string"]}


def test_full_refresh_reads_every_row_of_a_multi_page_table(
    sim: dict[str, Any],
    connector: Path,
    config: Path,
    streams: dict[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    """A full-refresh `read` of a 300-row table, 70 rows a page, emits exactly the admin dump's
    rows, each once."""
    records, _ = read(sim, connector, config, configured(streams["account"], tmp_path))
    dump = admin_rows(sim, ENV, "account")
    assert len(records) == len(dump) == 300
    assert rows_by_id(records, "accountid") == rows_by_id(dump, "accountid")


def test_incremental_read_after_churn_reports_exactly_the_changes(
    sim: dict[str, Any],
    connector: Path,
    config: Path,
    streams: dict[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    """An incremental `read` reads every row and ends with a delta token as its state; after
    churn (7 creates, 9 updates, 5 deletes) a `read` from that state emits the created and
    updated rows as they now are and each deleted row as its id with `_ab_cdc_deleted_at`,
    so applying them reproduces the table; a third `read` emits nothing."""
    catalog = configured(streams["contact"], tmp_path, incremental=True)
    first, states = read(sim, connector, config, catalog)
    before = rows_by_id(admin_rows(sim, ENV, "contact"), "contactid")
    assert rows_by_id(first, "contactid") == before
    assert all(r["_ab_cdc_updated_at"] == r["modifiedon"] for r in first)
    state = states[-1]["stream"]
    assert state["stream_descriptor"]["name"] == "contact"
    assert state["stream_state"]["$deltatoken"] not in ("", "None")

    admin(
        sim,
        "POST",
        f"/environments/{ENV}/tables/contact/churn",
        {"creates": 7, "updates": 9, "deletes": 5, "seed": 3},
    )
    after = rows_by_id(admin_rows(sim, ENV, "contact"), "contactid")
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps([states[-1]]))
    changes, states = read(sim, connector, config, catalog, state_file)

    deleted = {r["contactid"] for r in changes if r.get("_ab_cdc_deleted_at")}
    upserts = rows_by_id([r for r in changes if not r.get("_ab_cdc_deleted_at")], "contactid")
    assert upserts == {key: row for key, row in after.items() if before.get(key) != row}
    assert len(upserts) >= 7
    assert set(before) - set(after) <= deleted
    assert not deleted & set(after)
    mirror = dict(before)
    mirror.update(upserts)
    for key in deleted:
        mirror.pop(key, None)
    assert mirror == after

    state_file.write_text(json.dumps([states[-1]]))
    quiet, _ = read(sim, connector, config, catalog, state_file)
    assert quiet == []
