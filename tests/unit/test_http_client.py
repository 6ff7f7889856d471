"""Which failed requests provably never left, and the trust store's start-up errors."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import httpx
import pytest

from service.http_client import never_sent, tls_context
from service.settings import SettingsError


def _mapped(cause: Exception) -> httpx.ConnectTimeout:
    """What httpx-aiohttp raises for an aiohttp connection error: ConnectTimeout from it."""
    error = httpx.ConnectTimeout(str(cause))
    error.__cause__ = cause
    return error


def test_a_refused_connection_never_sent_anything() -> None:
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
        ConnectionRefusedError(111, "refused"),
    )
    assert never_sent(_mapped(refused))


def test_a_connect_timeout_never_sent_anything() -> None:
    assert never_sent(_mapped(aiohttp.ConnectionTimeoutError("connect")))


def test_a_dropped_connection_may_have_sent_the_request() -> None:
    assert not never_sent(_mapped(aiohttp.ServerDisconnectedError()))
    assert not never_sent(_mapped(aiohttp.ClientOSError(104, "reset by peer")))


def test_a_read_timeout_may_have_sent_the_request() -> None:
    error = httpx.ReadTimeout("read")
    error.__cause__ = aiohttp.SocketTimeoutError("read")
    assert not never_sent(error)


def test_httpx_own_errors_say_it_themselves() -> None:
    assert never_sent(httpx.ConnectError("refused"))
    assert never_sent(httpx.PoolTimeout("pool"))
    assert not never_sent(httpx.ReadError("reset"))


def test_a_missing_ca_bundle_stops_the_start_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="ITWIN_WORKER_CA_BUNDLE"):
        tls_context(tmp_path / "missing.pem")


def test_a_ca_bundle_without_certificates_stops_the_start(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(SettingsError, match="ITWIN_WORKER_CA_BUNDLE"):
        tls_context(garbage)


def test_the_context_verifies_hosts_and_certificates() -> None:
    context = tls_context()
    assert context.check_hostname
    assert context.verify_mode.name == "CERT_REQUIRED"
