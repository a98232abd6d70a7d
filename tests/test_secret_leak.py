"""The client secret and the access tokens never show up in output, logs or the database."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.cli import run_cli
from tests.simfixtures import running_simulator

JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.")


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with running_simulator("basic", tmp_path_factory.mktemp("leak")) as ready:
        yield ready


@pytest.mark.slow
def test_secret_and_tokens_never_leak(sim: dict[str, Any], tmp_path: Path) -> None:
    """check, backfill, sync and status at debug level print neither the secret nor a JWT."""
    secret = sim["client_secret"]
    assert len(secret) > 10
    config = sim["config_file"]
    outputs: list[bytes] = []
    for command in (["check"], ["backfill"], ["sync", "--once"], ["status", "--json"]):
        result = run_cli("--config", config, "--log-level", "debug", *command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs.append((result.stdout + result.stderr).encode())
    everything = b"".join(outputs)
    assert b"token_acquired" in everything  # debug logging really ran
    assert secret.encode() not in everything
    assert JWT.search(everything) is None
    database = Path(sim["state_dir"]) / "dvmirror" / "mirror.db"
    for path in database.parent.glob("mirror.db*"):
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert JWT.search(data) is None, path


@pytest.mark.slow
def test_wrong_secret_message_is_clear_and_masked(sim: dict[str, Any], tmp_path: Path) -> None:
    """A wrong secret gives exit 3 and a fix, and the wrong secret itself is not echoed."""
    wrong = "Definitely-Not-The-Secret-123456"
    secret_file = tmp_path / "wrong.secret"
    secret_file.write_text(wrong)
    secret_file.chmod(0o600)
    text = Path(sim["config_file"]).read_text()
    config = tmp_path / "wrong.toml"
    config.write_text(
        re.sub(
            r"client_secret = \{ file = \"[^\"]+\" \}",
            f'client_secret = {{ file = "{secret_file}" }}',
            text,
        )
    )
    result = run_cli("--config", config, "--log-level", "debug", "check", cwd=tmp_path)
    assert result.returncode == 3, result.stdout + result.stderr
    assert wrong not in result.stdout + result.stderr
    assert "secret" in (result.stdout + result.stderr).lower()
