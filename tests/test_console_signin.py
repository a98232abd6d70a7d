"""The console's sign-in over real HTTPS with real MSAL, against an independent identity
provider written from Microsoft's documentation (tests/oidc_idp.py): what signs in, and every
refusal of issue 22 item 7, each leaving no session cookie behind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.console_harness import (
    ADMINS,
    FABRIKAM,
    STRANGERS,
    Harness,
    query_of,
    running_console,
    session_cookie,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(name="h")
async def _harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running_console(tmp_path) as harness:
        yield harness


async def test_operator_signs_in_and_sees_only_their_tenant(h: Harness) -> None:
    """A Contoso operator signs in (302 to next), gets a session cookie and sees Contoso's
    environment on `/`, but not Fabrikam's."""
    browser = h.browser()
    response = await h.sign_in(browser, "olga", next_path="/env/contoso_prod")
    assert response.status == 302, await response.text()
    assert response.headers["Location"] == "/env/contoso_prod"
    assert session_cookie(browser)
    page = await browser.get(f"{h.url}/")
    text = await page.text()
    assert page.status == 200
    assert 'id="env-contoso_prod"' in text
    assert "fabrikam_prod" not in text
    assert "Olga Operator" in text
