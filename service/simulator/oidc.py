"""OpenID Connect discovery and the JWKS, so an OIDC client library can take the simulator as its
authority: it reads `/.well-known/openid-configuration`, gets a token from `token_endpoint`
and checks the token's signature against `jwks_uri`.

Only the client-credentials grant is simulated. The authorization endpoint exists because
discovery requires one, and answers every request with an OAuth error: there is no user to log in.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .oauth import AUTH_METHODS, GRANT_TYPE, TOKEN_PATH
from .pipeline import Endpoint
from .state import SimulatorState
from .tokens import ALGORITHM

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/.well-known/openid-configuration/jwks"
"""Where the identity service (ims.bentley.com) publishes its keys, and so the simulator."""
AUTHORIZE_PATH = "/connect/authorize"
OIDC_PATHS = frozenset({DISCOVERY_PATH, JWKS_PATH, AUTHORIZE_PATH})

# Keys rotate only when the simulator restarts; an hour's caching is what clients expect.
_CACHEABLE = {"Cache-Control": "public, max-age=3600"}


def discovery_document(state: SimulatorState, base_url: str) -> dict[str, Any]:
    """The provider metadata (OpenID Connect Discovery 1.0 §3) as seen from `base_url`.

    The endpoints are at the address the client used, so they are reachable from wherever it
    is; `issuer` is the configured one when set.
    """
    root = base_url.rstrip("/")
    return {
        "issuer": state.issuer_for(base_url),
        "authorization_endpoint": root + AUTHORIZE_PATH,
        "token_endpoint": root + TOKEN_PATH,
        "jwks_uri": root + JWKS_PATH,
        # Required of every provider. `code` is listed although the authorization endpoint
        # refuses every request: no user logs in here, but clients expect the field filled.
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALGORITHM],
        "grant_types_supported": [GRANT_TYPE],
        "token_endpoint_auth_methods_supported": list(AUTH_METHODS),
    }


def discovery_endpoint(state: SimulatorState) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return JSONResponse(discovery_document(state, str(request.base_url)), headers=_CACHEABLE)

    return endpoint


def jwks_endpoint(state: SimulatorState) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return JSONResponse(state.signer.jwks(), headers=_CACHEABLE)

    return endpoint


async def authorize_endpoint(request: Request) -> Response:
    # RFC 6749 §4.1.2.1 would redirect an error back to the client; with no registered
    # redirect URIs there is nowhere trusted to send it, so it is answered directly.
    body = {
        "error": "invalid_request",
        "error_description": "The simulator logs in no users: use the client_credentials grant.",
    }
    return JSONResponse(body, status_code=400, headers={"Cache-Control": "no-store"})
