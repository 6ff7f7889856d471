"""What counts as "Redis cannot answer now" (`service.outages.REDIS_UNAVAILABLE`), checked
against the installed redis-py: its exception tree, the classes its parser gives the server's
error replies, the cluster client's messages; and what the pipeline does with each class."""

from __future__ import annotations

import ast
import inspect
from typing import Any

import pytest
import redis.asyncio.cluster
from redis._parsers.base import BaseParser
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterDownError,
    ClusterError,
    DataError,
    InvalidResponse,
    MasterDownError,
    MaxConnectionsError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.api import ApiResponse
from service.commands import BY_ROUTING_KEY
from service.delivery import Delivery
from service.idempotency import Claim, MemoryOutcomes
from service.jobs import JobFollower
from service.metrics import Metrics
from service.outages import REDIS, REDIS_UNAVAILABLE, Outages
from service.pipeline import DeliveryPolicy, Pipeline
from service.redis_connection import (
    RETRIES,
    TOPOLOGY_UNAVAILABLE,
    ClusterClient,
    ClusterUnavailable,
    cluster_failure,
)
from tests.fakes import FakeApi, FakePublisher

CANNOT_ANSWER_NOW: list[Exception] = [
    RedisConnectionError("Error 111 connecting to 127.0.0.1:7000. Connection refused."),
    RedisTimeoutError("Timeout reading from 127.0.0.1:7000"),
    BusyLoadingError("Redis is loading the dataset in memory"),
    AuthenticationError("invalid username-password pair or user is disabled."),
    MaxConnectionsError(),
    MasterNotFoundError("No master found for 'itwin'"),
    ClusterDownError("The cluster is down"),
    MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    ClusterError("TTL exhausted."),
    TryAgainError("Multiple keys request during rehashing of slot"),
    SlotNotCoveredError('Slot "5" is not covered by the cluster.'),
    ClusterUnavailable("Redis Cluster cannot be connected."),
]
BUGS: list[Exception] = [
    ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ResponseError("ERR user_script:3: Script attempted to access nonexistent global variable"),
    NoScriptError("No matching script."),
    ReadOnlyError("You can't write against a read only replica."),
    OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    NoPermissionError("this user has no permissions to run the 'evalsha' command"),
    ClusterCrossSlotError("Keys in request don't hash to the same slot"),
    MovedError("3999 127.0.0.1:6381"),
    AskError("3999 127.0.0.1:6381"),
    DataError("Invalid input of type: 'dict'."),
    InvalidResponse("Protocol Error: b'x'"),
    RedisClusterException("No way to dispatch this command to Redis Cluster. Missing key."),
]


@pytest.mark.parametrize("error", CANNOT_ANSWER_NOW, ids=lambda e: type(e).__name__)
def test_every_way_redis_says_it_cannot_answer_now_is_an_outage(error: Exception) -> None:
    assert isinstance(error, REDIS_UNAVAILABLE)


@pytest.mark.parametrize("error", BUGS, ids=lambda e: f"{type(e).__name__}:{e}"[:40])
def test_an_answer_to_a_call_redis_received_or_could_not_route_stays_a_bug(
    error: Exception,
) -> None:
    assert not isinstance(error, REDIS_UNAVAILABLE)
    assert cluster_failure(error) is None


@pytest.mark.parametrize(
    ("reply", "outage"),
    [
        ("CLUSTERDOWN The cluster is down", True),
        ("CLUSTERDOWN Hash slot not served", True),
        ("MASTERDOWN Link with MASTER is down", True),
        ("TRYAGAIN Multiple keys request during rehashing of slot", True),
        ("LOADING Redis is loading the dataset in memory", True),
        ("ERR max number of clients reached", True),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("ERR Error running script (call to f_1234): @user_script:1: oops", False),
        ("NOSCRIPT No matching script. Please use EVAL.", False),
        ("READONLY You can't write against a read only replica.", False),
        ("OOM command not allowed when used memory > 'maxmemory'.", False),
        ("MOVED 3999 127.0.0.1:6381", False),
    ],
)
def test_the_servers_error_replies_as_redis_py_parses_them(reply: str, outage: bool) -> None:
    error = BaseParser.parse_error(reply)  # type: ignore[no-untyped-call]
    assert isinstance(error, REDIS_UNAVAILABLE) is outage


def cluster_client_messages() -> list[str]:
    """The start of every message redis-py's asyncio cluster module raises a bare
    RedisClusterException with (an f-string's values left out)."""
    messages = []
    for node in ast.walk(ast.parse(inspect.getsource(redis.asyncio.cluster))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "RedisClusterException"
            and node.args
        ):
            message = node.args[0]
            parts = message.values if isinstance(message, ast.JoinedStr) else [message]
            messages.append(
                "".join(str(p.value) if isinstance(p, ast.Constant) else "\0" for p in parts)
            )
    return messages


def test_the_cluster_clients_layout_failures_are_still_worded_as_matched() -> None:
    """redis-py raises these as bare RedisClusterExceptions: an upgrade that rewords one must
    fail here, not turn an outage into a crash."""
    messages = cluster_client_messages()
    for prefix in TOPOLOGY_UNAVAILABLE:
        assert [m for m in messages if m.startswith(prefix)], prefix
    # Everything else it raises so is about the call, and stays a crash.
    others = [m for m in messages if not m.startswith(TOPOLOGY_UNAVAILABLE)]
    assert any(m.startswith("No way to dispatch this command") for m in others)


def unreachable(cause: BaseException) -> RedisClusterException:
    try:
        raise RedisClusterException(
            f"Redis Cluster cannot be connected. Please provide at least one reachable node: "
            f"{cause}"
        ) from cause
    except RedisClusterException as error:
        return error


@pytest.mark.parametrize(
    ("error", "meant"),
    [
        (unreachable(RedisConnectionError("Error 111 connecting")), ClusterUnavailable),
        (unreachable(RedisTimeoutError("Timeout connecting to server")), ClusterUnavailable),
        (
            RedisClusterException("All slots are not covered after query all startup_nodes."),
            ClusterUnavailable,
        ),
        (
            RedisClusterException("startup_nodes could not agree on a valid slots cache: a vs b"),
            ClusterUnavailable,
        ),
        # A node with cluster mode off: a configuration to fix, not to wait for.
        (unreachable(RedisClusterException("Cluster mode is not enabled on this node")), None),
        (RedisClusterException("Invalid args in command: ('EVALSHA',)"), None),
    ],
)
def test_the_cluster_clients_bare_exceptions_by_what_they_mean(
    error: Exception, meant: type[Exception] | None
) -> None:
    translated = cluster_failure(error)
    assert (None if translated is None else type(translated)) is meant
    if translated is not None:
        assert isinstance(translated, REDIS_UNAVAILABLE)


async def test_a_write_on_a_connection_closed_under_it_is_a_connection_error() -> None:
    """redis-py issue 4287: the cluster client closes connections other calls are using; their
    write fails inside redis-py's socket layer with an AttributeError (no writer any more)."""
    connection = Connection()  # never connected: no writer, as after a concurrent close
    with pytest.raises(AttributeError) as raised:
        await connection._send_packed_command([b"*1\r\n$4\r\nPING\r\n"])
    translated = cluster_failure(raised.value)
    assert isinstance(translated, RedisConnectionError)
    assert isinstance(translated, REDIS_UNAVAILABLE)


def test_an_attribute_error_of_our_own_stays_a_bug() -> None:
    with pytest.raises(AttributeError) as raised:
        None.writelines  # type: ignore[attr-defined]  # noqa: B018 - the bug under test
    assert cluster_failure(raised.value) is None


SPEC = BY_ROUTING_KEY["workspace.create"]
CREATED = ApiResponse(201, {"workspace": {"id": "w1", "name": "w"}}, 1)


class FailingOutcomes(MemoryOutcomes):
    """Records in memory; the first claim and every record fail with `error`."""

    def __init__(self, error: Exception) -> None:
        super().__init__(ttl=60, lease=5)
        self.error: Exception | None = error
        self.record_error = error

    async def claim(
        self, command_id: str, *, fresh: bool = False, unsent_token: str | None = None
    ) -> Claim:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return await super().claim(command_id, fresh=fresh, unsent_token=unsent_token)

    async def record(
        self, command_id: str, token: str, event: bytes, *, replace: bool = False
    ) -> bytes:
        raise self.record_error


def waiting(
    outcomes: MemoryOutcomes, api: FakeApi, publisher: FakePublisher
) -> tuple[Pipeline, list[float | None]]:
    """A pipeline whose Redis answers the first PING; and what the dependency gauge said at
    each PING."""
    metrics = Metrics(frozenset({SPEC.routing_key}))
    gauge: list[float | None] = []

    async def ping() -> bool:
        gauge.append(
            metrics.registry.get_sample_value("itwin_worker_dependency_down", {"dependency": REDIS})
        )
        return True

    pipeline = Pipeline(
        api,
        publisher,
        outcomes,
        metrics=metrics,
        follower=JobFollower(api, publisher, outcomes, schedule=(15.0,)),
        policy=DeliveryPolicy(retry_delays=(), crash_backoff=0.001),
        outages=Outages(metrics, ping, {}, poll_seconds=0.001),
    )
    return pipeline, gauge


def command() -> Delivery:
    return Delivery(body=b'{"name": "w"}', routing_key=SPEC.routing_key, message_id="c1")


@pytest.mark.parametrize("error", CANNOT_ANSWER_NOW, ids=lambda e: type(e).__name__)
async def test_an_outage_holds_the_claim_and_never_loses_the_apis_outcome(
    error: Exception,
) -> None:
    api, publisher = FakeApi(CREATED), FakePublisher()
    pipeline, gauge = waiting(FailingOutcomes(error), api, publisher)
    await pipeline.handle(SPEC, command())  # returns: the delivery is acked, not nacked
    assert gauge == [1.0], "waited for Redis once, the dependency gauge up meanwhile"
    assert len(api.requests) == 1
    assert [event["type"] for event in publisher.published] == ["workspace.created"]


async def test_a_script_error_crashes_the_command_back_to_its_queue() -> None:
    error = ResponseError("ERR Error running script (call to f_1234): @user_script:1: oops")
    api, publisher = FakeApi(CREATED), FakePublisher()
    pipeline, gauge = waiting(FailingOutcomes(error), api, publisher)
    with pytest.raises(ResponseError):
        await pipeline.handle(SPEC, command())
    assert gauge == [], "not waited on"
    assert api.requests == []
    assert publisher.published == []


class AnswerLostOnce(MemoryOutcomes):
    """The first claim takes effect in the store, and its answer is lost on the way back."""

    def __init__(self) -> None:
        super().__init__(ttl=60, lease=2)
        self.answers: list[str] = []

    async def claim(
        self, command_id: str, *, fresh: bool = False, unsent_token: str | None = None
    ) -> Claim:
        claim = await super().claim(command_id, fresh=fresh, unsent_token=unsent_token)
        self.answers.append(type(claim).__name__)
        if len(self.answers) == 1:
            raise RedisConnectionError("Connection closed by server.")
        return claim


async def test_a_claim_whose_answer_was_lost_finds_its_own_lease_when_tried_again() -> None:
    """Not another holder's lease to wait out (the whole lease time) before working on it."""
    api, publisher = FakeApi(CREATED), FakePublisher()
    outcomes = AnswerLostOnce()
    pipeline, gauge = waiting(outcomes, api, publisher)
    await pipeline.handle(SPEC, command())
    assert outcomes.answers == ["Leased", "Leased"]
    assert gauge == [1.0]
    assert [event["type"] for event in publisher.published] == ["workspace.created"]


async def test_a_call_whose_connection_was_closed_under_it_is_tried_again_with_its_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As redis-py tries a ConnectionError: the same arguments (a script's token), RETRIES more
    times; then the caller gets the ConnectionError."""
    calls: list[tuple[Any, ...]] = []
    closes = [True, True, False]

    async def cluster_call(self: RedisCluster, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if closes.pop(0):
            await Connection()._send_packed_command([b"*1\r\n$4\r\nPING\r\n"])
        return b"answer"

    monkeypatch.setattr(RedisCluster, "execute_command", cluster_call)
    client = ClusterClient(host="127.0.0.1", port=7000)  # connects on first use only: never
    assert await client.execute_command("EVALSHA", "sha", 1, "key", "token") == b"answer"
    assert calls == [("EVALSHA", "sha", 1, "key", "token")] * 3

    calls.clear()
    closes[:] = [True] * (RETRIES + 1)
    with pytest.raises(RedisConnectionError):
        await client.execute_command("EVALSHA", "sha", 1, "key", "token")
    assert len(calls) == RETRIES + 1
