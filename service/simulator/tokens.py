"""Access tokens as the identity service issues them: RS256-signed JWTs, with a JWKS to check them.

The signing key is generated when the simulator starts and lives only in memory, so tokens of
one simulator run are worthless to the next. PyJWT does the signing and the verifying; the
simulator only chooses the claims.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ALGORITHM = "RS256"
AUDIENCE = "itwin-platform"
"""The resource the tokens are for: the iTwin Platform APIs, as in the identity service's tokens."""
TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type, not a password)
"""RFC 9068 §2.1: the `typ` of a JWT access token, so it cannot pass for an ID token."""
_KEY_BITS = 2048
_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti", "client_id", "scope"]


@dataclass(frozen=True, slots=True)
class SignedToken:
    token: str
    jti: str
    expires_at: int
    """The `exp` claim: `time.time()` seconds."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What the simulator needs from a token that verified."""

    jti: str
    client_id: str


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 key id: SHA-256 over the required members in lexicographic order, no spaces."""
    required = {name: jwk[name] for name in ("e", "kty", "n")}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


class TokenSigner:
    """One RSA key pair: signs the simulator's access tokens and verifies them on every call."""

    def __init__(self) -> None:
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
        self._public_key = self._private_key.public_key()
        public_jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self._public_key, as_dict=True)
        self.kid = _thumbprint(public_jwk)
        self._jwk = public_jwk | {"kid": self.kid, "use": "sig", "alg": ALGORITHM}

    def jwks(self) -> dict[str, Any]:
        """The JSON Web Key Set a client fetches from `jwks_uri` to check the signature."""
        return {"keys": [dict(self._jwk)]}

    def sign(self, issuer: str, client_id: str, scope: str, lifetime_seconds: int) -> SignedToken:
        now = time.time()
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": AUDIENCE,
            "sub": client_id,
            "client_id": client_id,
            "scope": scope,
            "iat": math.floor(now),
            # Rounded up, so the token lives at least the `expires_in` the answer promises.
            "exp": math.ceil(now + lifetime_seconds),
            "jti": secrets.token_urlsafe(16),
        }
        headers = {"kid": self.kid, "typ": TOKEN_TYPE}
        token = jwt.encode(claims, self._private_key, algorithm=ALGORITHM, headers=headers)
        return SignedToken(token, claims["jti"], claims["exp"])

    def verify(self, token: str, issuer: str | None) -> Claims | None:
        """The token's claims if our key signed it (for `issuer`, unless None: any issuer this
        key signed for) and it has not expired."""
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=issuer,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError:
            return None
        jti, client_id = claims["jti"], claims["client_id"]
        if not (isinstance(jti, str) and isinstance(client_id, str)):
            return None
        return Claims(jti, client_id)
