"""Logging: JSON lines off a TTY, context from contextvars, secrets and tokens masked everywhere."""

from __future__ import annotations

import io
import subprocess
import sys

import orjson
import structlog

from sync.logs import configure_logging, get_logger, mask_text
from tests.cli import clean_env

SECRET = "Very-Secret-Client-Value-42"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL3gifQ.c2lnbmF0dXJlLXBhcnQ"


def test_json_lines_with_context_and_masking() -> None:
    """An event is one JSON line carrying bound context, with secret values and tokens masked."""
    stream = io.StringIO()
    configure_logging("debug", stream=stream, json=True, secrets=[SECRET])
    log = get_logger("test")
    with structlog.contextvars.bound_contextvars(
        tenant="contoso", environment="contoso_prod", table="account"
    ):
        log.info(
            "token_acquired",
            detail=f"secret was {SECRET}",
            header=f"Authorization: Bearer {JWT}",
            client_secret="anything",
            nested={"value": [JWT]},
        )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    event = orjson.loads(lines[0])
    assert event["event"] == "token_acquired"
    assert (event["tenant"], event["environment"], event["table"]) == (
        "contoso",
        "contoso_prod",
        "account",
    )
    assert SECRET not in lines[0] and JWT not in lines[0]
    assert event["client_secret"] == "***"
    assert event["header"] == "Authorization: Bearer ***"


def test_exception_text_is_masked() -> None:
    """A logged exception whose message carries a token is scrubbed too."""
    stream = io.StringIO()
    configure_logging("info", stream=stream, json=True, secrets=[SECRET])
    try:
        raise RuntimeError(f"boom {SECRET} {JWT}")
    except RuntimeError:
        get_logger().exception("failed")
    out = stream.getvalue()
    assert "boom" in out and SECRET not in out and JWT not in out


def test_mask_text_leaves_ordinary_text() -> None:
    """Masking does not eat ordinary words."""
    assert mask_text("rows=5000 table=account bearer") == "rows=5000 table=account bearer"


def test_subprocess_never_prints_secret() -> None:
    """A process that logs its configured secret at debug level never prints it, on either stream."""
    code = (
        "import sys; from sync.logs import configure_logging, get_logger\n"
        f"configure_logging('debug', secrets=['{SECRET}'])\n"
        f"get_logger().debug('debugging', secret_in_text='value={SECRET}')\n"
        f"print('stdout line', '{SECRET}'.replace('{SECRET}', 'x'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(), check=True
    )
    assert "debugging" in result.stderr
    assert SECRET not in result.stderr + result.stdout
