"""Checking a client assertion (certificate credential) the way Entra documents it (pure).

Header: ``alg`` RS256 or PS256, the certificate named by ``x5t`` (SHA-1) or ``x5t#S256``
(SHA-256) thumbprint, or by the leaf of ``x5c``. Claims: ``aud`` = this tenant's token URL,
``iss`` = ``sub`` = client id, ``exp`` in the future, ``jti`` present and (optionally) never
presented twice for the same resource, ``nbf`` optional [reference 1.3, checklist 10].
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from sync.simulator import aadsts
from sync.simulator.credentials import AppCredential, b64url

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = 60


def _x5c_thumbprint(header: Mapping[str, Any]) -> str | None:
    chain = header.get("x5c")
    if not chain or not isinstance(chain, list):
        return None
    try:
        leaf = x509.load_der_x509_certificate(base64.b64decode(chain[0]))
    except (ValueError, TypeError):
        return None
    return b64url(leaf.fingerprint(hashes.SHA256()))


class AssertionChecker:
    """Verifies assertions and remembers the jti values already used."""

    def __init__(self, *, reject_replays: bool, clock: Callable[[], float] = time.time) -> None:
        self.reject_replays = reject_replays
        self._clock = clock
        self._seen: dict[tuple[str, str, str], float] = {}

    def check(
        self,
        assertion: str,
        credential: AppCredential,
        *,
        audiences: Collection[str],
        resource: str,
    ) -> dict[str, Any]:
        """Return the assertion's claims, or raise the matching `aadsts.EntraError`."""
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise aadsts.malformed_jwt() from None
        alg = header.get("alg")
        presented = header.get("x5t#S256") or header.get("x5t") or _x5c_thumbprint(header)
        if isinstance(presented, str):
            presented = presented.rstrip("=")  # MSAL keeps the base64 padding; Entra accepts it
        public_key = credential.certificate.public_key() if credential.certificate else None
        if (
            not isinstance(public_key, RSAPublicKey)
            or alg not in ("RS256", "PS256")
            or presented not in (credential.x5t, credential.x5t_s256)
        ):
            raise aadsts.bad_signature(
                "[Reason - The key was not found., "
                f"Thumbprint of key used by client: '{presented}']"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                public_key,
                algorithms=[str(alg)],
                options={
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "iss", "sub", "aud", "jti"],
                },
            )
        except jwt.InvalidSignatureError:
            raise aadsts.bad_signature() from None
        except jwt.PyJWTError:
            raise aadsts.malformed_jwt() from None
        now = self._clock()
        if (
            float(claims["exp"]) + CLOCK_SKEW <= now
            or float(claims.get("nbf", now)) - CLOCK_SKEW > now
        ):
            raise aadsts.assertion_time_range()
        if claims["iss"] != credential.client_id or claims["sub"] != credential.client_id:
            raise aadsts.assertion_wrong_client()
        presented_aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        expected = {a.lower().rstrip("/") for a in audiences}
        if not any(str(a).lower().rstrip("/") in expected for a in presented_aud):
            raise aadsts.assertion_invalid(
                f"The audience in the assertion was '{claims['aud']}'; it must be the token "
                "endpoint of this tenant."
            )
        if self.reject_replays:
            self._seen = {key: until for key, until in self._seen.items() if until > now}
            key = (credential.client_id, str(claims["jti"]), resource)
            if key in self._seen:
                raise aadsts.assertion_invalid("Its jti was already presented for this resource.")
            self._seen[key] = float(claims["exp"]) + CLOCK_SKEW
        return claims
