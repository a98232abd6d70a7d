"""Client-secret rotation in the simulated Entra: an app holds several secrets at once; the admin
API adds one (a new 0600 file, an id like Entra's keyId) and revokes one (AADSTS7000215 from then
on, while the other secrets and the tokens already issued keep working)."""

from __future__ import annotations

import json
import stat
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.simfixtures import _no_ca_env, admin, environment, running_simulator, tenant  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_ca_env")

SECRET_APP = "11111111-1111-1111-1111-111111111111"
CERT_APP = "22222222-2222-2222-2222-222222222222"


@pytest.fixture(scope="module", name="sim")
def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    # Its own simulator: these tests revoke the app's first secret.
    with running_simulator("auth", tmp_path_factory.mktemp("sim-secrets")) as ready:
        yield ready


def post_token(sim: dict[str, Any], secret: str) -> requests.Response:
    """A raw client-credentials request to contoso's token endpoint over HTTPS."""
    url = f"{sim['authority_host']}/{tenant(sim, 'contoso')['tenant_id']}/oauth2/v2.0/token"
    form = {
        "client_id": SECRET_APP,
        "client_secret": secret,
        "grant_type": "client_credentials",
        "scope": f"{environment(sim, 'contoso_prod')['url']}/.default",
    }
    return requests.post(url, data=form, verify=sim["ca_file"], timeout=30)


def admin_error(sim: dict[str, Any], method: str, path: str) -> int:
    """The HTTP status of an admin call that must fail."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        admin(sim, method, path)
    with caught.value as error:  # an HTTPError holds the response's socket
        assert "error" in json.loads(error.read())
        return error.code


def test_the_first_secret_has_an_id_in_the_ready_line(sim: dict[str, Any]) -> None:
    first = next(a for a in sim["apps"] if a["client_id"] == SECRET_APP)
    assert first["secret_id"] == sim["secret_id"]
    assert len(first["secret_id"]) == 36 and first["secret_id"].count("-") == 4


def test_add_then_revoke_rotates_the_secret(sim: dict[str, Any]) -> None:
    """A added B: both sign in; A revoked: A gets 7000215, B still signs in, and a token issued
    with A before the revocation is still accepted by the environment."""
    old = sim["client_secret"]
    before = post_token(sim, old)
    assert before.status_code == 200, before.text
    issued_with_old = before.json()["access_token"]

    added = admin(sim, "POST", f"/apps/{SECRET_APP}/secrets")
    assert set(added) == {"secret_file", "secret_id"}  # never the value itself
    path = Path(added["secret_file"])
    assert path.parent == Path(sim["secret_file"]).parent
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    new = path.read_text().strip()
    assert new and new != old and new not in str(added)
    assert added["secret_id"] != sim["secret_id"]
    assert post_token(sim, new).status_code == 200
    assert post_token(sim, old).status_code == 200  # both are live during the rotation

    revoked = admin(sim, "DELETE", f"/apps/{SECRET_APP}/secrets/{sim['secret_id']}")
    assert revoked["revoked"] == sim["secret_id"]
    refused = post_token(sim, old)
    assert refused.status_code == 401
    assert refused.json()["error_codes"] == [7000215]
    assert post_token(sim, new).status_code == 200
    assert admin(sim, "GET", "/stats")["entra"]["errors"]["AADSTS7000215"] >= 1

    # Deleting a secret revokes no token: the one issued before still reads the environment.
    url = environment(sim, "contoso_prod")["url"]
    whoami = requests.get(
        f"{url}/api/data/v9.2/WhoAmI",
        headers={"Authorization": f"Bearer {issued_with_old}"},
        verify=sim["ca_file"],
        timeout=30,
    )
    assert whoami.status_code == 200, whoami.text


def test_unknown_app_or_id_is_404_and_certificate_app_400(sim: dict[str, Any]) -> None:
    unknown_app = "99999999-9999-9999-9999-999999999999"
    assert admin_error(sim, "POST", f"/apps/{unknown_app}/secrets") == 404
    assert admin_error(sim, "DELETE", f"/apps/{unknown_app}/secrets/{sim['secret_id']}") == 404
    missing = "00000000-0000-0000-0000-000000000000"
    assert admin_error(sim, "DELETE", f"/apps/{SECRET_APP}/secrets/{missing}") == 404
    assert admin_error(sim, "POST", f"/apps/{CERT_APP}/secrets") == 400
    assert admin_error(sim, "DELETE", f"/apps/{CERT_APP}/secrets/{missing}") == 400


def test_revoking_twice_is_404(sim: dict[str, Any]) -> None:
    added = admin(sim, "POST", f"/apps/{SECRET_APP}/secrets")
    admin(sim, "DELETE", f"/apps/{SECRET_APP}/secrets/{added['secret_id']}")
    assert post_token(sim, Path(added["secret_file"]).read_text()).status_code == 401
    assert admin_error(sim, "DELETE", f"/apps/{SECRET_APP}/secrets/{added['secret_id']}") == 404
