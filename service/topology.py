"""The broker objects of the contract, named from settings, declared idempotently at start-up.

Command queues are quorum queues whose poison messages are bounded by `x-delivery-limit` and
dead-lettered at least once to the dead-letter exchange, which feeds the dead-letter queue.
Commands whose routing key matches no queue reach the worker through the command exchange's
alternate exchange.

Each command queue is bound with its routing key to three exchanges: the command exchange
(producers), the retry exchange (the delay queues dead-letter through it, so a delayed command
comes back with its own routing key and through an exchange only the worker writes to) and the
replay exchange (operators). The job-poll queue takes messages from the retry exchange only.
"""

from __future__ import annotations

from dataclasses import dataclass

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue

from service.commands import CommandSpec
from service.settings import Settings


@dataclass(frozen=True)
class Topology:
    commands: RabbitExchange
    events: RabbitExchange
    unrouted: RabbitExchange
    retry: RabbitExchange
    replay: RabbitExchange
    dead_letters: RabbitExchange
    dead_letter_queue: RabbitQueue
    unrouted_queue: RabbitQueue
    poll_queue: RabbitQueue
    delays: dict[float, tuple[RabbitExchange, RabbitQueue]]
    """Per delay: a fanout exchange and a queue whose expired messages go back, through the
    retry exchange, to the work queue bound to their routing key."""
    settings: Settings

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        unrouted = RabbitExchange(
            f"{settings.command_exchange}.unrouted", type=ExchangeType.FANOUT, durable=True
        )
        dead_letters = RabbitExchange(
            f"{settings.queue_prefix}dlx", type=ExchangeType.FANOUT, durable=True
        )
        retry = RabbitExchange(settings.retry_exchange, type=ExchangeType.DIRECT, durable=True)
        return cls(
            commands=RabbitExchange(
                settings.command_exchange,
                type=ExchangeType.TOPIC,
                durable=True,
                arguments={"alternate-exchange": unrouted.name},
            ),
            events=RabbitExchange(settings.event_exchange, type=ExchangeType.TOPIC, durable=True),
            unrouted=unrouted,
            retry=retry,
            # A replayed command whose routing key no queue is bound to (an UnknownCommand)
            # goes the way it first went, rather than being dropped by the broker.
            replay=RabbitExchange(
                settings.replay_exchange,
                type=ExchangeType.DIRECT,
                durable=True,
                arguments={"alternate-exchange": unrouted.name},
            ),
            dead_letters=dead_letters,
            dead_letter_queue=RabbitQueue(
                settings.dead_letter_queue, queue_type=QueueType.QUORUM, durable=True
            ),
            unrouted_queue=cls._work_queue(settings, settings.unrouted_queue, "", dead_letters),
            poll_queue=cls._work_queue(
                settings, settings.poll_queue, settings.poll_queue, dead_letters
            ),
            # One delay queue per distinct delay, shared by command retries and job polls.
            delays={
                seconds: cls._delay(settings, seconds, retry)
                for seconds in sorted({*settings.retry_delays, *settings.job_poll_schedule})
            },
            settings=settings,
        )

    @staticmethod
    def _delay(
        settings: Settings, seconds: float, retry: RabbitExchange
    ) -> tuple[RabbitExchange, RabbitQueue]:
        name = settings.delay_queue(seconds)
        queue = RabbitQueue(
            name,
            queue_type=QueueType.QUORUM,
            durable=True,
            arguments={
                "x-message-ttl": int(seconds * 1000),
                # No dead-letter routing key: a message keeps the one it was published with.
                "x-dead-letter-exchange": retry.name,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        return RabbitExchange(name, type=ExchangeType.FANOUT, durable=True), queue

    @staticmethod
    def _work_queue(
        settings: Settings, name: str, routing_key: str, dead_letters: RabbitExchange
    ) -> RabbitQueue:
        return RabbitQueue(
            name,
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key=routing_key,
            arguments={
                "x-delivery-limit": settings.delivery_limit,
                "x-dead-letter-exchange": dead_letters.name,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )

    @property
    def own_exchanges(self) -> frozenset[str]:
        """The exchanges only the worker and operators write to."""
        return frozenset({self.retry.name, self.replay.name})

    def command_queue(self, spec: CommandSpec) -> RabbitQueue:
        return self._work_queue(
            self.settings,
            self.settings.command_queue(spec.routing_key),
            spec.routing_key,
            self.dead_letters,
        )
