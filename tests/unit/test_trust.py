"""What the worker believes of a delivery: its own headers by origin, reply_to by pattern."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from service.delivery import REPLAY_HEADER, Delivery
from service.dlq import amqp_user
from service.settings import Settings, SettingsError, load_settings
from service.trust import Trust, printable
from tests.fakes import FakeApi, FakePublisher
from tests.unit.test_pipeline import SPEC, created, pipeline

DEFAULT_PATTERN = Settings.model_fields["reply_to_pattern"].default
OWN = frozenset({"itwin-worker.retry", "itwin-worker.replay"})
FORGED = {
    "x-itwin-replay": True,
    "x-itwin-delayed-attempt": 0,
    "X-Itwin-Routing-Key": "workspace.delete",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}


def trust(pattern: str = DEFAULT_PATTERN) -> Trust:
    return Trust.of(OWN, pattern, "itwin-worker.")


@pytest.mark.parametrize("exchange", ["itwin-worker.retry", "itwin-worker.replay"])
def test_the_workers_own_exchanges_keep_its_headers(exchange: str) -> None:
    vetted = trust().vet(exchange, FORGED, None)
    assert vetted.headers == FORGED
    assert vetted.ignored_headers == ()


@pytest.mark.parametrize("exchange", ["itwin.commands", "", "amq.topic", "itwin-worker.retryx"])
def test_anything_else_loses_them_whatever_their_case_and_names_them(exchange: str) -> None:
    vetted = trust().vet(exchange, FORGED, None)
    assert vetted.headers == {"traceparent": FORGED["traceparent"]}
    assert vetted.ignored_headers == (
        "X-Itwin-Routing-Key",
        "x-itwin-delayed-attempt",
        "x-itwin-replay",
    )


def test_ignored_header_names_are_made_printable_and_bounded() -> None:
    headers = {f"x-itwin-{i}\n": i for i in range(20)}
    vetted = trust().vet("itwin.commands", headers, None)
    assert vetted.headers == {}
    assert len(vetted.ignored_headers) == 8
    assert all(name.endswith("\\n") and "\n" not in name for name in vetted.ignored_headers)


@pytest.mark.parametrize(
    "reply_to",
    [
        "amq.rabbitmq.reply-to.g1h2AA1yZXBseUA5MjQ4ODg0AAAiSgAAAABrDrwj.tE9CLAJtSBjUJuc49Iizgw==",
        "reply.orders-service.7f3a",
        "reply.x",
    ],
)
def test_direct_reply_to_and_the_documented_prefix_are_honoured(reply_to: str) -> None:
    vetted = trust().vet("itwin.commands", {}, reply_to)
    assert (vetted.reply_to, vetted.refused_reply_to) == (reply_to, None)


@pytest.mark.parametrize(
    "reply_to",
    [
        "billing.inbox",
        "reply.",
        "reply.x\n",
        "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
        "itwin-worker.workspace.create",
        "xreply.x",
    ],
)
def test_any_other_reply_to_is_refused(reply_to: str) -> None:
    vetted = trust().vet("itwin.commands", {}, reply_to)
    assert vetted.reply_to is None
    assert vetted.refused_reply_to == printable(reply_to)


def test_the_workers_own_queues_are_never_a_reply_target_whatever_the_pattern() -> None:
    broad = trust(".*")
    assert broad.reply_allowed("billing.inbox")
    assert not broad.reply_allowed("itwin-worker.workspace.create")
    assert not broad.reply_allowed("itwin-worker.dlq")


def test_direct_reply_to_is_honoured_whatever_the_pattern() -> None:
    narrow = trust(r"^reply\..+$")
    assert narrow.reply_allowed("amq.rabbitmq.reply-to.abc")
    assert not narrow.reply_allowed("amq.rabbitmq.reply-toabc")


def test_a_hostile_value_is_escaped_and_cut_for_the_log() -> None:
    shown = printable("victim\n2026-01-01 fake line \x1b[31m" + "é" * 200)
    assert "\n" not in shown
    assert "\x1b" not in shown
    assert shown.startswith("victim\\n2026-01-01 fake line \\x1b[31m\\xe9")
    assert shown.endswith("...")
    assert shown.isascii()


def test_reply_to_pattern_must_be_a_regular_expression() -> None:
    with pytest.raises(SettingsError, match=r"ITWIN_WORKER_REPLY_TO_PATTERN: .*regular expression"):
        load_settings(reply_to_pattern="reply\\.(")
    assert load_settings(reply_to_pattern="^reply\\..+$").reply_to_pattern == "^reply\\..+$"


def test_the_operator_user_is_read_from_the_url_without_its_password() -> None:
    assert amqp_user("amqp://ops%40site:s3cret@rabbit:5672/prod") == "ops@site"
    assert amqp_user("amqps://rabbit/prod") == "guest"


async def test_the_pipeline_logs_what_it_ignored_once_names_only() -> None:
    api, publisher = FakeApi(created()), FakePublisher()
    vetted = trust().vet("itwin.commands", {REPLAY_HEADER: "forged-value"}, "billing\ninbox")
    delivery = Delivery(
        body=b'{"name": "w"}',
        routing_key="workspace.create",
        message_id="c1",
        reply_to=vetted.reply_to,
        headers=vetted.headers,
        ignored_headers=vetted.ignored_headers,
        refused_reply_to=vetted.refused_reply_to,
    )
    with capture_logs() as logs:
        await pipeline(api, publisher).handle(SPEC, delivery)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [entry.get("headers") for entry in warnings] == [[REPLAY_HEADER], None]
    assert warnings[1]["reply_to"] == "billing\\ninbox"
    assert "forged-value" not in repr(logs)
    assert len(publisher.published) == 1
