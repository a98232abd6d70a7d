"""Peer: Microsoft's Python SDK for Dataverse (PowerPlatform-Dataverse-Client 1.1.0), unmodified,
signing in with azure-identity's ClientSecretCredential against the simulated authority.

The SDK runs from its own cached venv (tests/peers.py) in a subprocess; the rows it reads are
compared with the admin API's dump of the simulated table.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import clean_env
from tests.peers import peer_venv
from tests.simfixtures import admin_rows, environment, running_simulator

pytestmark = [pytest.mark.peers, pytest.mark.timeout(600)]

SDK_VERSION = "1.1.0"
REQUIREMENTS = (f"PowerPlatform-Dataverse-Client=={SDK_VERSION}", "azure-identity==1.27.0")
ENV = "contoso_prod"

# Runs in the SDK's venv: read the arguments (the secret too) from stdin, print one JSON line
# per page the SDK returns.
DRIVER = """
import json, sys
from azure.identity import ClientSecretCredential
from PowerPlatform.Dataverse.client import DataverseClient

args = json.load(sys.stdin)
credential = ClientSecretCredential(
    args["tenant_id"],
    args["client_id"],
    args["client_secret"],
    authority=args["authority_host"],
    disable_instance_discovery=True,
)
with DataverseClient(args["url"], credential) as client:
    for page in client.records.list_pages(args["table"], page_size=args["page_size"]):
        print(json.dumps([dict(record.data) for record in page]), flush=True)
"""


@pytest.fixture(scope="module", name="sdk_python")
def _sdk_python() -> Path:
    return peer_venv("powerplatform-dataverse-client", SDK_VERSION, REQUIREMENTS) / "bin/python"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_simulator("basic", tmp_path_factory.mktemp("peer-sdk")) as ready:
        yield ready


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """A row without OData annotations (what the admin dump holds)."""
    return {k: v for k, v in row.items() if "@" not in k}


def test_sdk_reads_every_row_of_a_multi_page_table(
    sim: dict[str, Any], sdk_python: Path, tmp_path: Path
) -> None:
    """The SDK, authenticated by azure-identity at the simulated authority, pages through a
    300-row table 70 rows at a time and returns exactly the rows of the admin dump."""
    env = environment(sim, ENV)
    driver = tmp_path / "read_table.py"
    driver.write_text(DRIVER)
    arguments = {
        "tenant_id": env["tenant"]["tenant_id"],
        "client_id": sim["client_id"],
        "client_secret": sim["client_secret"],
        "authority_host": sim["authority_host"],
        "url": env["url"],
        "table": "account",
        "page_size": 70,
    }
    # The SDK calls requests without a verify argument: the CA comes from the environment.
    done = subprocess.run(
        [str(sdk_python), str(driver)],
        input=json.dumps(arguments),
        capture_output=True,
        text=True,
        env=clean_env({"REQUESTS_CA_BUNDLE": sim["ca_file"]}),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pages = [json.loads(line) for line in done.stdout.splitlines()]
    assert [len(page) for page in pages] == [70, 70, 70, 70, 20]
    rows = {row["accountid"]: plain(row) for page in pages for row in page}
    dump = admin_rows(sim, ENV, "account")
    assert len(dump) == 300
    assert rows == {row["accountid"]: row for row in dump}
