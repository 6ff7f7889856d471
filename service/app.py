"""The bootstrap: the one place that builds every dependency and wires them together.

`Worker(settings)` builds every adapter from the settings; a test hands in its own (a broker, an
HTTP client on `httpx.MockTransport`, a publisher or outcome store of its own) and gets the same
graph around them. Each command queue gets the same small consumer, which hands the delivery to
the pipeline; FastStream acks it when the handler returns and nacks it when it raises
(`AckPolicy.NACK_ON_ERROR`; a cancelled handler at shutdown settles nothing, so the broker
redelivers).

Two connections to the broker: the consumers' (`broker`), and the publishing one
(`publishing`) for every event, reply, delay and dead letter. The broker answers one bad
publish by closing its channel, and on RabbitMQ 3.10 a `reply_to` it cannot decode closes the
whole connection; on a shared one, every unacked delivery would go back to its queue each time
(`service.publisher` makes such a refusal that one command's failure). RabbitMQ also advises
separate connections for publishing and consuming: flow control blocks a publishing
connection, and acks must not wait behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiormq
import httpx
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from aiormq.exceptions import AMQPError
from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.rabbit import Channel, RabbitBroker, RabbitExchange, RabbitQueue
from redis.exceptions import RedisError

from service.api import ApiClient, RetryPolicy
from service.auth import ClientCredentials, TokenProvider
from service.breaker import Breaker, BreakerPolicy, LocalBreaker, RedisBreaker
from service.commands import COMMANDS, UNKNOWN_COMMAND_EVENT, CommandSpec
from service.delivery import delivery_from
from service.http_client import http_client
from service.idempotency import MemoryOutcomes, OutcomeStore, RedisOutcomes
from service.job_kinds import JOB_KINDS
from service.jobs import FOLLOW_FAILED_EVENT, JOB_EVENTS, JobFollower, PollPublisher
from service.limiter import Limiter, LocalLimiter, RedisLimiter, buckets_for
from service.limits import Limits
from service.metrics import Metrics
from service.outages import REDIS_UNAVAILABLE, DependencyDown, Outages
from service.pipeline import Api, DeliveryPolicy, Pipeline, Publisher
from service.probes import Probes
from service.publisher import BrokerPublisher
from service.redis_connection import RedisConnection, connect_redis
from service.redis_keys import RedisKeys
from service.settings import Settings, SettingsError
from service.topology import Topology
from service.tracing import Tracing
from service.trust import Trust, printable

log = structlog.get_logger("itwin_worker.app")

DETACHED_GRACE_SECONDS = 2.0
"""How long `stop` waits, after the broker's grace time, for commands whose request is out;
Kubernetes' default termination grace leaves 5 s past ours (settings)."""


def credentials_from(settings: Settings) -> ClientCredentials:
    missing = [
        f"ITWIN_WORKER_{name.upper()}"
        for name in ("client_id", "client_secret")
        if not getattr(settings, name)
    ]
    if missing or settings.client_id is None or settings.client_secret is None:
        raise SettingsError(f"invalid settings:\n  {', '.join(missing)}: required to run")
    return ClientCredentials(
        token_url=str(settings.token_url),
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        scope=settings.scopes,
    )


async def _whole_message(message: StreamMessage[Any]) -> AbstractIncomingMessage:
    """Hand the handler the broker's message, not a decoded body: the pipeline reads the bytes
    as sent (bad JSON is its `InvalidCommand`, not a decoder's crash) and the properties. With
    dependency injection off (`apply_types=False`) the handler gets this one value.

    aio-pika's message, not FastStream's: FastStream keeps what the decoder returns in the
    message, and the message holding itself is a reference cycle, which kept each delivery's
    body in memory until the garbage collector ran (300 one-megabyte commands: 400 MiB)."""
    raw: AbstractIncomingMessage = message.raw_message
    return raw


class EventPublisher(Publisher, PollPublisher, Protocol):
    """What the pipeline and the job follower publish through: `BrokerPublisher`, or a fake."""


class Worker:
    """The running worker: call `start()`, then `stop()` (which drains in-flight commands)."""

    def __init__(
        self,
        settings: Settings,
        *,
        broker: RabbitBroker | None = None,
        http: httpx.AsyncClient | None = None,
        redis: RedisConnection | None = None,
        limiter: Limiter | None = None,
        api: Api | None = None,
        outcomes: OutcomeStore | None = None,
        publisher: EventPublisher | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """Every adapter defaults to the one the settings describe."""
        self.settings = settings
        self.tracing = tracing or Tracing.from_settings(settings)
        self.metrics = Metrics(frozenset(spec.routing_key for spec in COMMANDS))
        self.topology = Topology.from_settings(settings)
        self.broker = broker or RabbitBroker(
            settings.amqp_url,
            default_channel=Channel(prefetch_count=settings.prefetch),
            graceful_timeout=settings.shutdown_grace_seconds,
            logger=None,
            apply_types=False,
        )
        # A publishing connection reconnects sooner: publishes wait for it (`service.publisher`).
        self.publishing = RabbitBroker(
            settings.amqp_url, reconnect_interval=1.0, logger=None, apply_types=False
        )
        # Consumer spans (continuing a command's traceparent) and the trace context on every
        # publish; on a broker handed in too, so its publishes carry the same headers.
        middleware = self.tracing.middleware(_span_names(self.topology))
        self.broker.add_middleware(middleware)
        self.publishing.add_middleware(middleware)
        self.limits = Limits(
            settings.max_command_bytes, settings.max_response_bytes, settings.max_event_bytes
        )
        # One client for the API and the token endpoint: the same proxies, trust and pool.
        self.http = http or http_client(
            timeout=httpx.Timeout(
                settings.api_read_timeout_seconds, connect=settings.api_connect_timeout_seconds
            ),
            max_connections=settings.prefetch + 8,
            ca_bundle=settings.ca_bundle,
            proxies_from_environment=settings.proxies_from_environment,
        )
        self.redis = redis or connect_redis(settings)
        self.keys = RedisKeys(settings.redis_prefix)
        self.api_breaker = self._breaker("api")
        self.token_breaker = self._breaker("token_endpoint")
        self.outages = Outages(
            self.metrics,
            self.redis.ping if self.redis is not None else None,
            {breaker.name: breaker.wait for breaker in (self.api_breaker, self.token_breaker)},
        )
        self.tokens = TokenProvider(
            self.http,
            credentials_from(settings),
            settings.token_refresh_margin_seconds,
            tracing=self.tracing,
            metrics=self.metrics,
            breaker=self.token_breaker,
        )
        self.limiter = limiter or self._limiter()
        self.api: Api = api or ApiClient(
            self.http,
            self.tokens,
            self.limiter,
            RetryPolicy(
                attempts=settings.retry_attempts,
                initial=settings.retry_initial_seconds,
                maximum=settings.retry_max_seconds,
                rate_limit_budget=settings.rate_limit_wait_budget_seconds,
                default_retry_after=settings.default_retry_after_seconds,
            ),
            base_url=str(settings.api_base_url),
            metrics=self.metrics,
            tracing=self.tracing,
            breaker=self.api_breaker,
            max_response_bytes=self.limits.response_bytes,
        )
        self.publisher = publisher or BrokerPublisher(
            self.publishing,
            self.topology,
            max_event_bytes=self.limits.event_bytes,
            failure_types=_failure_types(),
        )
        self.outcomes = outcomes or self._outcomes()
        self.follower = JobFollower(
            self.api,
            self.publisher,
            self.outcomes,
            settings.job_poll_schedule,
            tracing=self.tracing,
            metrics=self.metrics,
            max_event_bytes=self.limits.event_bytes,
        )
        self.pipeline = Pipeline(
            self.api,
            self.publisher,
            self.outcomes,
            metrics=self.metrics,
            follower=self.follower,
            policy=DeliveryPolicy(
                settings.retry_delays,
                settings.delivery_limit,
                crash_backoff=settings.retry_initial_seconds,
                crash_backoff_max=settings.retry_max_seconds,
            ),
            outages=self.outages,
            limits=self.limits,
        )
        self.probes = Probes(self.metrics, self.readiness)
        self._consuming = False
        self._subscribed: list[RabbitQueue] = []
        topology = self.topology
        trust = Trust.of(topology.own_exchanges, settings.reply_to_pattern, settings.queue_prefix)
        for spec in COMMANDS:
            queue = topology.command_queue(spec)
            consumer = _consumer(self.pipeline, spec, queue.name, trust)
            self._subscribe(queue, topology.commands, consumer)
        unrouted = topology.unrouted_queue
        consumer = _consumer(self.pipeline, None, unrouted.name, trust)
        self._subscribe(unrouted, topology.unrouted, consumer)
        poller = _poller(self.follower, topology, self.outages)
        self._subscribe(topology.poll_queue, topology.retry, poller)

    def _breaker(self, name: str) -> Breaker:
        settings = self.settings
        policy = BreakerPolicy(
            settings.breaker_failures,
            settings.breaker_probe_initial_seconds,
            settings.breaker_probe_max_seconds,
            # A probe that never reports (its replica died) holds the others one call's time.
            probe_lease=settings.api_connect_timeout_seconds + settings.api_read_timeout_seconds,
        )
        if self.redis is None:
            return LocalBreaker(name, policy, self.metrics)
        return RedisBreaker(name, policy, self.metrics, self.redis.client, self.keys.breaker(name))

    def _limiter(self) -> Limiter:
        settings = self.settings
        buckets = buckets_for(
            settings.rate_limit_per_second, settings.rate_limit_burst, settings.rate_limit_per_hour
        )
        share = settings.poll_min_share
        if self.redis is None:
            return LocalLimiter(buckets, poll_share=share)
        return RedisLimiter(self.redis.client, self.keys, buckets, poll_share=share)

    def _outcomes(self) -> OutcomeStore:
        settings = self.settings
        ttl, lease = settings.idempotency_ttl_seconds, settings.idempotency_lease_seconds
        if self.redis is None:
            log.info("idempotency records in memory: correct for a single replica only")
            return MemoryOutcomes(ttl, lease)
        return RedisOutcomes(self.redis.client, self.keys, ttl, lease)

    def _subscribe(
        self,
        queue: RabbitQueue,
        exchange: RabbitExchange | None,
        handler: Callable[..., Awaitable[None]],
    ) -> None:
        """Ack after the handler returns; an unexpected crash is nacked and comes back (bounded
        by the queue's delivery limit). FastStream's own replies are off: we publish events."""
        self._subscribed.append(queue)
        self.broker.subscriber(
            queue,
            exchange,
            ack_policy=AckPolicy.NACK_ON_ERROR,
            no_reply=True,
            decoder=_whole_message,
        )(handler)

    async def readiness(self) -> dict[str, bool]:
        checks = {
            "consuming": self._consuming,
            "broker": self._consuming
            and await self.broker.ping(timeout=1.0)
            and await self.publishing.ping(timeout=1.0),
        }
        checks["consumers"] = checks["broker"] and await self._every_consumer_consumes()
        if self.redis is not None:
            try:
                async with asyncio.timeout(1.0):
                    checks["redis"] = await self.redis.ping()
            except (*REDIS_UNAVAILABLE, RedisError, OSError):
                checks["redis"] = False
            if checks["redis"]:
                self.outages.redis_answered()
        # A breaker's state lives in Redis when Redis is configured: without Redis (or with
        # Redis not answering), the last state this process saw.
        for breaker in (self.api_breaker, self.token_breaker):
            if not checks.get("redis", True):
                checks[breaker.name] = not breaker.is_open
                continue
            try:
                async with asyncio.timeout(1.0):
                    checks[breaker.name] = not await breaker.check()
            except (*REDIS_UNAVAILABLE, TimeoutError):
                checks[breaker.name] = not breaker.is_open
        return checks

    async def _every_consumer_consumes(self) -> bool:
        """Each subscribed queue has its consumer on a live channel. aio-pika restores them
        after a reconnect; FastStream issue #2758 saw them not come back after a node loss,
        and a replica that consumes nothing must not look ready."""
        expected: dict[int, int] = {}
        channels: dict[int, AbstractChannel] = {}
        for queue in self._subscribed:
            # The declarer's own object (no I/O): the one the subscriber consumes on.
            channel = (await self.broker.declare_queue(queue)).channel
            channels[id(channel)] = channel
            expected[id(channel)] = expected.get(id(channel), 0) + 1
        for key, channel in channels.items():
            try:
                underlay = await channel.get_underlay_channel()
            except AMQPError:
                return False
            if not isinstance(underlay, aiormq.Channel) or underlay.is_closed:
                return False
            if len(underlay.consumers) < expected[key]:
                return False
        return True

    async def start(self) -> None:
        await self.probes.start(self.settings.http_host, self.settings.http_port)
        try:
            await self.broker.connect()
            await self.publishing.connect()
        except BaseException:
            await self.broker.stop()
            await self.probes.stop()
            raise
        topology = self.topology
        await self.broker.declare_exchange(topology.events)
        await self.broker.declare_exchange(topology.dead_letters)
        dead_letter_queue = await self.broker.declare_queue(topology.dead_letter_queue)
        await dead_letter_queue.bind(topology.dead_letters.name)
        await self.broker.declare_exchange(topology.retry)
        await self.broker.declare_exchange(topology.replay)
        for exchange, queue in topology.delays.values():
            await self.broker.declare_exchange(exchange)
            delay_queue = await self.broker.declare_queue(queue)
            await delay_queue.bind(exchange.name)
        # The subscribers bind each command queue to the command exchange; these are the
        # worker's and the operators' ways back in.
        for spec in COMMANDS:
            command_queue = await self.broker.declare_queue(topology.command_queue(spec))
            await command_queue.bind(topology.retry.name, spec.routing_key)
            await command_queue.bind(topology.replay.name, spec.routing_key)
        await self.broker.start()
        self._consuming = True
        log.info(
            "worker consuming",
            queues=len(COMMANDS) + 2,
            prefetch=self.settings.prefetch,
            http_port=self.probes.port,
        )

    async def stop(self) -> None:
        self._consuming = False
        # FastStream waits up to the grace time for the handlers, then closes the channels.
        await self.broker.stop()
        # Commands whose delivery the close took while their request was out: their outcome
        # is recorded for the next delivery if it comes in time.
        await self.pipeline.detached.finish(within=DETACHED_GRACE_SECONDS)
        await self.pipeline.close()
        # After the consumers and the detached commands: they publish until the last is done.
        await self.publishing.stop()
        await self.probes.stop()
        await self.http.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await asyncio.to_thread(self.tracing.shutdown)
        log.info("worker stopped")


def _failure_types() -> dict[str, str]:
    """The failure event that stands in for each event the broker refuses: a command's own,
    or its job kind's `<...>.follow.failed` for a followed job's."""
    types: dict[str, str] = {}
    for kind in JOB_KINDS.values():
        for event in (kind.progress_event, *kind.terminal_events.values()):
            types[event] = kind.follow_failed_event
    for spec in COMMANDS:
        if spec.success_event:
            types[spec.success_event] = spec.failure_event
    return types


def _span_names(topology: Topology) -> set[str]:
    """The exchange, queue and routing-key names spans may carry: the worker's own. Anything
    else (a reply_to queue, a stranger's routing key) is `other` there."""
    names = {"default", UNKNOWN_COMMAND_EVENT, FOLLOW_FAILED_EVENT, *JOB_EVENTS}
    for exchange in (
        topology.commands, topology.events, topology.unrouted, topology.retry,
        topology.replay, topology.dead_letters,
    ):  # fmt: skip
        names.add(exchange.name)
    for queue in (topology.dead_letter_queue, topology.unrouted_queue, topology.poll_queue):
        names.add(queue.name)
    for exchange, queue in topology.delays.values():
        names.update((exchange.name, queue.name))
    for spec in COMMANDS:
        names.update((spec.routing_key, spec.failure_event, topology.command_queue(spec).name))
        if spec.success_event:
            names.add(spec.success_event)
    return names


def _poller(
    follower: JobFollower, topology: Topology, outages: Outages
) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    async def poll(message: AbstractIncomingMessage) -> None:
        # The worker schedules its polls through the retry exchange only; anything else in the
        # poll queue was put there by someone else (a forged poll could follow any job, or stop
        # another command's following by taking its next poll id).
        exchange = message.exchange or ""
        if exchange != topology.retry.name:
            log.warning(
                "dropping a poll that did not come through the retry exchange",
                exchange=printable(exchange),
            )
            return
        # A poll is idempotent by its id: one that met an outage is done again once the
        # dependency is back, and spends none of the poll's deliveries.
        while True:
            try:
                await follower.poll(message.body)
                return
            except DependencyDown as down:
                await outages.wait(down.dependency)
            except REDIS_UNAVAILABLE:
                await outages.wait_for_redis()

    return poll


def _consumer(
    pipeline: Pipeline, spec: CommandSpec | None, queue: str, trust: Trust
) -> Callable[[AbstractIncomingMessage], Awaitable[None]]:
    routing_key = spec.routing_key if spec else None

    async def consume(message: AbstractIncomingMessage) -> None:
        await pipeline.handle(spec, delivery_from(message, queue, trust, routing_key))

    consume.__name__ = f"consume_{spec.routing_key if spec else 'unrouted'}".replace(".", "_")
    return consume
