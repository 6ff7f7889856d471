"""The simulator as a producer team meets it: a maintained OIDC/OAuth client library (authlib)
discovers it, gets a client-credentials token and calls the API with its own Accept header; the
token is a JWT that JOSE libraries (PyJWT, joserfc) verify against the published JWKS.

All over real sockets, against the session simulator (reset for each test).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from authlib.integrations.base_client import OAuthError  # type: ignore[import-untyped]
from authlib.integrations.httpx_client import AsyncOAuth2Client  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet

from service.simulator import ACCEPT_MEDIA_TYPE, SimulatorConfig, SimulatorHandle, running_simulator
from tests.support import free_port

SCOPE = "itwin-platform"
AUDIENCE = "itwin-platform"
INVALID_TOKEN = {
    "error": {"code": "InvalidToken", "message": "The access token is invalid or has expired."}
}
AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


async def discover(sim: SimulatorHandle) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        response = await client.get(sim.discovery_url)
    assert response.status_code == 200
    metadata: dict[str, Any] = response.json()
    return metadata


class SentRequests:
    """An httpx request hook: what the client library actually put on the wire."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.requests.append(request)


def oauth_client(
    sim: SimulatorHandle,
    metadata: dict[str, Any],
    method: str,
    sent: SentRequests | None = None,
    secret: str | None = None,
) -> Any:
    """authlib's client as its documentation sets it up for the client-credentials grant."""
    hooks = {"request": [sent]} if sent is not None else {}
    return AsyncOAuth2Client(
        client_id=sim.client_id,
        client_secret=secret or sim.client_secret,
        scope=SCOPE,
        token_endpoint_auth_method=method,
        token_endpoint=metadata["token_endpoint"],
        grant_type="client_credentials",
        event_hooks=hooks,
        timeout=5.0,
    )


@pytest.fixture
async def metadata(sim: SimulatorHandle) -> dict[str, Any]:
    return await discover(sim)


@pytest.fixture
async def client(sim: SimulatorHandle, metadata: dict[str, Any]) -> AsyncIterator[Any]:
    async with oauth_client(sim, metadata, "client_secret_basic") as oauth:
        await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        yield oauth


def verify_with_pyjwt(token: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """As a resource server would: the key by the token's kid, from the discovered jwks_uri."""
    signing_key = jwt.PyJWKClient(metadata["jwks_uri"]).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        signing_key,
        algorithms=metadata["id_token_signing_alg_values_supported"],
        audience=AUDIENCE,
        issuer=metadata["issuer"],
    )
    return claims


# --- discovery --------------------------------------------------------------------------------


async def test_discovery_names_the_endpoints_and_what_they_support(
    sim: SimulatorHandle, metadata: dict[str, Any]
) -> None:
    assert metadata["issuer"] == sim.base_url
    assert metadata["token_endpoint"] == sim.token_url
    assert metadata["jwks_uri"] == f"{sim.base_url}/.well-known/openid-configuration/jwks"
    assert metadata["authorization_endpoint"] == f"{sim.base_url}/connect/authorize"
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["subject_types_supported"] == ["public"]
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert sorted(metadata["token_endpoint_auth_methods_supported"]) == AUTH_METHODS
    assert [(r.kind, r.path, r.status) for r in sim.requests(kind="oidc")] == [
        ("oidc", "/.well-known/openid-configuration", 200)
    ]
    assert sim.requests(kind="api") == []


async def test_jwks_publishes_one_rs256_signing_key(metadata: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=5.0) as plain:
        jwks = (await plain.get(metadata["jwks_uri"])).json()

    [key] = jwks["keys"]
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
    assert key["kid"]
    assert "d" not in key, "the private exponent must never be published"


async def test_authorization_endpoint_refuses_as_an_oauth_server(metadata: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=5.0) as plain:
        response = await plain.get(
            metadata["authorization_endpoint"], params={"response_type": "code", "client_id": "x"}
        )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


# --- discovery -> token -> API call -----------------------------------------------------------


@pytest.mark.parametrize("accept", ["application/json", "*/*"])
async def test_oidc_client_discovers_fetches_a_token_and_calls_the_api(
    sim: SimulatorHandle, metadata: dict[str, Any], accept: str
) -> None:
    async with oauth_client(sim, metadata, "client_secret_basic") as oauth:
        token = await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        created = await oauth.post(
            f"{sim.base_url}/contextcapture/workspaces",
            json={"name": "from authlib"},
            headers={"Accept": accept},
        )
        assert created.status_code == 201, created.text
        workspace = created.json()["workspace"]
        fetched = await oauth.get(
            f"{sim.base_url}/contextcapture/workspaces/{workspace['id']}",
            headers={"Accept": accept},
        )

    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert fetched.status_code == 200
    assert fetched.json() == {"workspace": workspace}
    assert [r.status for r in sim.requests(kind="api")] == [201, 200]


async def test_the_token_is_a_jwt_the_jwks_verifies(
    sim: SimulatorHandle, metadata: dict[str, Any], client: Any
) -> None:
    token: str = client.token["access_token"]

    claims = await asyncio.to_thread(verify_with_pyjwt, token, metadata)

    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert claims["iss"] == metadata["issuer"]
    assert claims["aud"] == AUDIENCE
    assert claims["client_id"] == sim.client_id
    assert claims["scope"] == SCOPE
    assert claims["exp"] - claims["iat"] in (3600, 3601)


async def test_the_token_verifies_with_joserfc_too(metadata: dict[str, Any], client: Any) -> None:
    async with httpx.AsyncClient(timeout=5.0) as plain:
        keys = KeySet.import_key_set((await plain.get(metadata["jwks_uri"])).json())

    decoded = jose_jwt.decode(client.token["access_token"], keys, algorithms=["RS256"])
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": metadata["issuer"]},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
    ).validate(decoded.claims)

    assert decoded.header["kid"] == keys.keys[0].kid


@pytest.mark.parametrize("method", AUTH_METHODS)
async def test_both_client_authentication_methods(
    sim: SimulatorHandle, metadata: dict[str, Any], method: str
) -> None:
    sent = SentRequests()
    async with oauth_client(sim, metadata, method, sent) as oauth:
        await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
        response = await oauth.post(
            f"{sim.base_url}/library/applications",
            json={"displayName": method, "version": "1"},
            headers={"Accept": "application/json"},
        )

    assert response.status_code == 201, response.text
    [token_request, _] = sent.requests
    form = httpx.QueryParams(token_request.content.decode())
    if method == "client_secret_basic":
        assert token_request.headers["authorization"].startswith("Basic ")
        assert "client_secret" not in form
    else:
        assert "authorization" not in token_request.headers
        assert (form["client_id"], form["client_secret"]) == (sim.client_id, sim.client_secret)


@pytest.mark.parametrize("method", AUTH_METHODS)
async def test_a_wrong_secret_is_refused_by_either_method(
    sim: SimulatorHandle, metadata: dict[str, Any], method: str
) -> None:
    async with oauth_client(sim, metadata, method, secret="wrong-secret") as oauth:
        with pytest.raises(OAuthError) as refused:
            await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")

    assert refused.value.error == "invalid_client"


# --- tokens the API refuses -------------------------------------------------------------------


async def test_an_expired_jwt_gets_401(sim: SimulatorHandle, metadata: dict[str, Any]) -> None:
    sim.configure(token_lifetime_seconds=1)
    async with oauth_client(sim, metadata, "client_secret_post") as oauth:
        token = await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
    access_token: str = token["access_token"]
    expires = jwt.decode(access_token, options={"verify_signature": False})["exp"]
    # Not revoked, only past its exp: the refusal can only come from the JWT's own claim.
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
    headers = {"Authorization": f"Bearer {access_token}", "Accept": ACCEPT_MEDIA_TYPE}

    async with httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as plain:
        response = await plain.post(
            "/contextcapture/workspaces", json={"name": "w"}, headers=headers
        )

    assert response.status_code == 401
    assert response.json() == INVALID_TOKEN
    with pytest.raises(jwt.ExpiredSignatureError):
        await asyncio.to_thread(verify_with_pyjwt, access_token, metadata)


async def test_a_jwt_signed_by_another_key_gets_401(sim: SimulatorHandle, client: Any) -> None:
    genuine: str = client.token["access_token"]
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        jwt.decode(genuine, options={"verify_signature": False}),
        forger,
        algorithm="RS256",
        headers={"kid": jwt.get_unverified_header(genuine)["kid"]},
    )

    async with httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as plain:
        for token, status in ((forged, 401), (genuine, 201)):
            response = await plain.post(
                "/contextcapture/workspaces",
                json={"name": "w"},
                headers={"Authorization": f"Bearer {token}", "Accept": "*/*"},
            )
            assert response.status_code == status


async def test_a_token_asked_for_at_one_address_is_good_at_another(
    sim: SimulatorHandle, client: Any
) -> None:
    """As the APIs take the identity service's tokens: asked for at one host, used at another."""
    headers = {"Authorization": f"Bearer {client.token['access_token']}", "Accept": "*/*"}

    async with httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as plain:
        elsewhere = await plain.get(
            "/contextcapture/workspaces/x", headers=headers | {"Host": "api.elsewhere.example"}
        )

    assert elsewhere.status_code == 404, "the token was accepted; the workspace is unknown"


async def test_a_jwt_of_another_issuer_gets_401() -> None:
    with running_simulator(SimulatorConfig(issuer="https://ims.one.example")) as sim:
        metadata = await discover(sim)
        async with oauth_client(sim, metadata, "client_secret_basic") as oauth:
            await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
            token = oauth.token["access_token"]
        sim.configure(issuer="https://ims.two.example")
        async with httpx.AsyncClient(base_url=sim.base_url, timeout=5.0) as plain:
            response = await plain.get(
                "/contextcapture/workspaces/x",
                headers={"Authorization": f"Bearer {token}", "Accept": "*/*"},
            )

    assert response.status_code == 401
    assert response.json() == INVALID_TOKEN


async def test_a_fixed_issuer_holds_whatever_address_the_client_uses() -> None:
    issuer = "https://ims.simulator.example"
    with running_simulator(SimulatorConfig(issuer=issuer)) as sim:
        metadata = await discover(sim)
        async with oauth_client(sim, metadata, "client_secret_basic") as oauth:
            await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
            response = await oauth.get(
                f"{sim.base_url}/contextcapture/workspaces/x",
                headers={"Accept": "application/json", "Host": "elsewhere.example"},
            )
        claims = jwt.decode(oauth.token["access_token"], options={"verify_signature": False})

    assert metadata["issuer"] == claims["iss"] == issuer
    assert metadata["token_endpoint"] == sim.token_url
    assert response.status_code == 404


async def test_a_revoked_jwt_gets_401_although_it_still_verifies(
    sim: SimulatorHandle, metadata: dict[str, Any], client: Any
) -> None:
    sim.expire_tokens()

    response = await client.get(
        f"{sim.base_url}/contextcapture/workspaces/x", headers={"Accept": "application/json"}
    )

    assert response.status_code == 401
    assert response.json() == INVALID_TOKEN
    await asyncio.to_thread(verify_with_pyjwt, client.token["access_token"], metadata)


# --- the command a cluster runs ---------------------------------------------------------------


async def test_the_simulator_command_serves_oidc_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    issuer = "https://ims.staging.example"
    log = tmp_path / "simulator.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.cli",
            "simulator",
            "--host=127.0.0.1",
            f"--port={port}",
            "--client=staging-client:staging-secret",
            f"--issuer={issuer}",
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    sim = SimulatorHandle(f"http://127.0.0.1:{port}", "staging-client", "staging-secret")
    try:
        async with asyncio.timeout(20):
            while "simulator on" not in log.read_text():
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
        async with asyncio.timeout(20):
            while True:
                try:
                    metadata = await discover(sim)
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
        async with oauth_client(sim, metadata, "client_secret_post") as oauth:
            await oauth.fetch_token(metadata["token_endpoint"], grant_type="client_credentials")
            response = await oauth.get(
                f"{sim.base_url}/contextcapture/workspaces/x", headers={"Accept": "*/*"}
            )
        assert metadata["issuer"] == issuer
        assert response.status_code == 404

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    finally:
        sim.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
