"""The redaction processor: secrets never reach a rendered log line."""

from __future__ import annotations

from typing import Any

from service.logs import REDACTED, SecretRedactor


def redact(**event: Any) -> dict[str, Any]:
    return dict(SecretRedactor(known_secrets=["s3cr3t-value"])(None, "info", event))


def test_values_under_secret_keys_are_masked() -> None:
    event = redact(client_secret="x", access_token="y", Authorization="Bearer z", password="p")
    assert set(event.values()) == {REDACTED}


def test_bearer_tokens_url_passwords_and_known_secrets_are_scrubbed_from_text() -> None:
    event = redact(
        event="sent Authorization: Bearer eyJhbGciOi.abc-def_ghi",
        url="amqp://guest:hunter2@rabbit:5672/",
        note="the secret s3cr3t-value leaked",
    )
    assert event["event"] == f"sent Authorization: Bearer {REDACTED}"
    assert event["url"] == f"amqp://guest:{REDACTED}@rabbit:5672/"
    assert event["note"] == f"the secret {REDACTED} leaked"


def test_nested_structures_are_walked() -> None:
    event = redact(request={"headers": {"Authorization": "Bearer q"}, "path": "/x"}, items=["ok"])
    assert event["request"] == {"headers": {"Authorization": REDACTED}, "path": "/x"}
    assert event["items"] == ["ok"]


def test_ordinary_fields_are_untouched() -> None:
    event = redact(event="command finished", command_id="c1", attempts=2, token_count=3)
    assert event == {
        "event": "command finished",
        "command_id": "c1",
        "attempts": 2,
        "token_count": 3,
    }


def test_unusual_value_types_are_still_scrubbed() -> None:
    class Text(str):
        pass

    event = redact(
        header=Text("Bearer abc.def"),
        pairs=[("x", "s3cr3t-value")],
        error=ValueError("s3cr3t-value"),
        flag=True,
        nothing=None,
    )
    assert event["header"] == f"Bearer {REDACTED}"
    assert event["pairs"] == [["x", REDACTED]]
    assert event["error"] == f"ValueError('{REDACTED}')"
    assert (event["flag"], event["nothing"]) == (True, None)
