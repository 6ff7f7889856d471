"""The OAuth2 client-credentials token endpoint, standing in for `ims.bentley.com/connect/token`.

Clients authenticate with HTTP Basic (`client_secret_basic`) or in the form
(`client_secret_post`); the access token is a signed JWT (see `tokens`). Errors use RFC 6749
§5.2 bodies (`{"error": "invalid_client"}`), not the API's error object, because that is what an
OAuth server answers.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import parse_qsl, unquote_plus

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .pipeline import Endpoint
from .state import SimulatorState

TOKEN_PATH = "/connect/token"  # noqa: S105 (a path, not a password)
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
GRANT_TYPE = "client_credentials"
AUTH_METHODS = ("client_secret_basic", "client_secret_post")

# RFC 6749 §5.1: token answers, errors included, must not be cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _OAuthError(Exception):
    def __init__(self, status: int, error: str, *, basic_auth: bool = False) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.basic_auth = basic_auth

    def response(self) -> Response:
        headers = dict(_NO_STORE)
        if self.basic_auth:
            # RFC 6749 §5.2: a failed Authorization-header login is answered with a challenge.
            headers["WWW-Authenticate"] = 'Basic realm="itwin-simulator"'
        return JSONResponse({"error": self.error}, status_code=self.status, headers=headers)


def _basic_credentials(authorization: str) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1 client credentials from an Authorization header, if it carries any."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _OAuthError(401, "invalid_client", basic_auth=True) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _OAuthError(401, "invalid_client", basic_auth=True)
    # The id and secret are form-encoded before being joined (§2.3.1).
    return unquote_plus(client_id), unquote_plus(secret)


async def _form(request: Request) -> dict[str, str]:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != FORM_MEDIA_TYPE:
        raise _OAuthError(400, "invalid_request")
    try:
        return dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
    except (UnicodeDecodeError, ValueError):
        raise _OAuthError(400, "invalid_request") from None


async def _issue(state: SimulatorState, request: Request) -> Response:
    config = state.config
    if config.token_endpoint_down:
        raise _OAuthError(503, "temporarily_unavailable")
    form = await _form(request)
    basic = _basic_credentials(request.headers.get("authorization", ""))
    if basic is not None and "client_secret" in form:
        # §2.3: a client must not use more than one authentication method at once.
        raise _OAuthError(400, "invalid_request")
    client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
    grant_type = form.get("grant_type", "")
    scope = form.get("scope", "").strip()
    if not (grant_type and client_id and secret and scope):
        raise _OAuthError(400, "invalid_request")
    if grant_type != GRANT_TYPE:
        raise _OAuthError(400, "unsupported_grant_type")
    expected = config.clients.get(client_id)
    # Compare even for an unknown client, so timing does not tell which client ids exist.
    matches = hmac.compare_digest((expected or "").encode(), secret.encode())
    if expected is None or not matches:
        raise _OAuthError(401, "invalid_client", basic_auth=basic is not None)
    body = {
        "access_token": state.issue_token(
            state.issuer_for(str(request.base_url)), client_id, scope
        ),
        "expires_in": config.token_lifetime_seconds,
        "token_type": "Bearer",
        "scope": scope,
    }
    return JSONResponse(body, headers=_NO_STORE)


def token_endpoint(state: SimulatorState) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        try:
            return await _issue(state, request)
        except _OAuthError as error:
            return error.response()

    return endpoint
