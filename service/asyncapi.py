"""The AsyncAPI 3 document of the worker: every channel, operation and message of the contract.

Built by looping over the catalogue, the topology and the JSON Schemas of `service.contract`, so
it cannot name a queue or a field the worker does not have. `contract.write` puts it in
`schemas/asyncapi.json`, and `.ci/asyncapi-check` validates it with the AsyncAPI parser.

Two things AsyncAPI has no field for are written as specification extensions or prose:

- The AMQP channel binding describes either a routing key on an exchange or a queue, never both;
  the queue a command's routing key is bound to is the binding's `x-queue` (name, arguments:
  quorum type, delivery limit, dead-letter exchange).
- Runtime expressions only know `$message.header` and `$message.payload`; AMQP's message
  properties (`correlation_id`, `reply_to`) are protocol headers, so they are addressed as
  `$message.header#/correlation_id` and described as properties. A message's `headers` schema
  lists application headers only (the dead letters' `x-itwin-*`), as the specification requires.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import unquote, urlsplit

from faststream.rabbit import RabbitExchange, RabbitQueue

from service import json_schemas
from service.commands import COMMANDS, UNKNOWN_COMMAND_EVENT
from service.delivery import (
    ERROR_CODE_HEADER,
    ERROR_MESSAGE_HEADER,
    EVENT_ID_HEADER,
    FAILED_AT_HEADER,
    ROUTING_KEY_HEADER,
)
from service.jobs import JOB_EVENTS
from service.settings import Settings
from service.topology import Topology

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
JSON = "application/json"
SERVER = "broker"
CORRELATION_ID = "correlationId"
UNKNOWN_COMMAND = "unknownCommand"
UNKNOWN_COMMAND_FAILED = "unknownCommandFailed"
DEAD_LETTER = "deadLetter"
REPLIES = "replies"

_DEFS = "#/$defs/"
_COMPONENT_SCHEMAS = "#/components/schemas/"

COMMAND_PROPERTIES = """\
A body larger than `MAX_COMMAND_BYTES` (default 1 MiB) is refused unread: `InvalidCommand`.

AMQP properties the worker reads:

- `message_id`: the command id and idempotency key. A command re-sent or redelivered with the \
same id after its outcome was recorded gets the recorded event again, with no second API call. \
Without one the command is still processed, under an id the worker makes up (reported in the \
event), and cannot be deduplicated.
- `correlation_id`: copied to every event the command causes; defaults to the command id.
- `reply_to`: if set and allowed (`REPLY_TO_PATTERN`, default \
`^(amq\\.rabbitmq\\.reply-to.*|reply\\..+)$`; RabbitMQ direct reply-to always, the worker's \
own queues never), the event is also published to that queue through the default exchange.
- headers `x-itwin-*` are the worker's own: they count only on messages that came through its \
retry or replay exchange (`itwin-worker.retry`, `itwin-worker.replay`), never on a producer's \
command.
- `content_type`: `application/json` (parameters allowed) or absent; anything else is \
`InvalidCommand`. Bodies are UTF-8 JSON either way.
- headers `traceparent`, `tracestate`, `baggage` (W3C Trace Context / Baggage): the worker \
continues that trace; without them (or with an invalid value) it starts a new one.

Publish commands persistent (delivery mode 2)."""

EVENT_PROPERTIES = """\
Published persistent (delivery mode 2) with publisher confirms, `content_type: \
application/json`, `message_id` = `eventId`, `correlation_id` = `correlationId`, AMQP `type` = \
the event type (also the routing key), and also sent to the command's `reply_to` if it has \
one. The command is acked only after its event is confirmed. Header `traceparent` (and \
`tracestate`): the worker's span for the command, in the command's trace. No event is larger \
than `MAX_EVENT_BYTES` (default 1 MiB): a result that would not fit is a `ResultTooLarge` \
failure; an event the broker refuses is replaced by an `EventRefused` failure with the same \
`eventId`."""

DEAD_LETTER_HEADERS: dict[str, str] = {
    ROUTING_KEY_HEADER: "The routing key the command arrived with.",
    ERROR_CODE_HEADER: "The failure event's `error.code` (`InvalidCommand`, `UnknownCommand`, "
    "`RetriesExhausted`, `Unauthorized`, `OutcomeUnknown`, `ResponseTooLarge`, "
    "`ResultTooLarge`, or the API's code).",
    ERROR_MESSAGE_HEADER: "The failure event's `error.message`.",
    EVENT_ID_HEADER: "The `eventId` of the failure event published for the command.",
    FAILED_AT_HEADER: "When the worker gave up on the command (ISO 8601, UTC).",
}


def document(settings: Settings | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the worker under `settings`.

    Without settings it describes the contract's defaults, whatever the environment says, so
    the committed `schemas/asyncapi.json` is the same on every machine.
    """
    settings = settings or Settings.model_construct()
    topology = Topology.from_settings(settings)
    vhost = _vhost(settings.amqp_url)
    components, payloads = _schemas()

    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    reply_messages: dict[str, Any] = {}
    event_channels: dict[str, Any] = {}

    def add_event(name: str, summary: str) -> None:
        messages[name] = _event_message(name, summary, payloads[name])
        reply_messages[name] = _ref("components", "messages", name)
        channel = f"events.{name}"
        event_channels[channel] = {
            "address": name,
            "title": f"{name} events",
            "description": f"Routing key `{name}` on the topic exchange "
            f"`{topology.events.name}`. Consumers bind their own queues to it.",
            "messages": {name: _ref("components", "messages", name)},
            "bindings": {"amqp": _routing_key_binding(topology.events, vhost)},
        }
        operations[f"send.{name}"] = {
            "action": "send",
            "channel": _ref("channels", channel),
            "title": f"Publish {name}",
            "summary": summary,
            "description": EVENT_PROPERTIES,
            "messages": [_ref("channels", channel, "messages", name)],
            "bindings": {"amqp": _publish_binding()},
        }

    command_channels: dict[str, Any] = {}
    for spec in COMMANDS:
        rk = spec.routing_key
        queue = topology.command_queue(spec)
        summary = (spec.model.__doc__ or rk).strip().splitlines()[0]
        messages[rk] = {
            "name": rk,
            "title": f"{rk} command",
            "summary": summary,
            "description": f"API call: `{spec.method} {spec.path}`{_query(spec.query)}. Success: "
            f"`{spec.success_event}`"
            f"; failure: `{spec.failure_event}`.\n\n{COMMAND_PROPERTIES}",
            "contentType": JSON,
            "correlationId": _ref("components", "correlationIds", CORRELATION_ID),
            "headers": _ref("components", "schemas", json_schemas.COMMAND_TRACE_HEADERS),
            "payload": payloads[rk],
            "bindings": {"amqp": {"bindingVersion": AMQP_BINDING_VERSION}},
        }
        channel = f"commands.{rk}"
        command_channels[channel] = {
            "address": rk,
            "title": f"{rk} commands",
            "description": f"Routing key `{rk}` on the topic exchange `{topology.commands.name}`, "
            f"bound to the quorum queue `{queue.name}` the worker consumes (`x-queue`).",
            "messages": {rk: _ref("components", "messages", rk)},
            "bindings": {"amqp": _routing_key_binding(topology.commands, vhost, queue)},
        }
        operations[f"receive.{rk}"] = {
            "action": "receive",
            "channel": _ref("channels", channel),
            "title": f"Handle {rk}",
            "summary": summary,
            "description": f"Validates the body, calls `{spec.method} {spec.path}` and publishes "
            f"exactly one event per recorded outcome: `{spec.success_event}` or "
            f"`{spec.failure_event}`. Faults (the worker's own error codes, a 5xx on a POST, "
            f"...) are also dead-lettered to `{topology.dead_letter_queue.name}`; the API's "
            "clean refusals (4xx) are not.",
            "messages": [_ref("channels", channel, "messages", rk)],
            "reply": _reply([event for event in (spec.success_event, spec.failure_event) if event]),
            "bindings": {"amqp": _receive_binding()},
        }
        if spec.success_event is not None:
            shape = json_schemas.result_schema(spec)
            outcome = "is the API's inner object." if shape is None else f": {shape['description']}"
            add_event(spec.success_event, f"{rk} succeeded: `result` {outcome}")
        add_event(spec.failure_event, f"{rk} failed: `error` says why.")
    for event_type, description in JOB_EVENTS.items():
        add_event(event_type, description)

    # Commands whose routing key no queue is bound to: the command exchange's alternate exchange.
    messages[UNKNOWN_COMMAND] = {
        "name": UNKNOWN_COMMAND,
        "title": "Command with an unknown routing key",
        "summary": "Any message published to the command exchange that no command queue takes.",
        "description": "The body is not read. It is answered with an `UnknownCommand` failure "
        "event and dead-lettered.\n\n" + COMMAND_PROPERTIES,
        "correlationId": _ref("components", "correlationIds", CORRELATION_ID),
        "headers": _ref("components", "schemas", json_schemas.COMMAND_TRACE_HEADERS),
        "payload": {"description": "Any body; it is not read."},
    }
    command_channels["commands.unrouted"] = {
        "address": None,
        "title": "Unknown commands",
        "description": f"Any routing key on `{topology.commands.name}` that no command queue is "
        f"bound to. The exchange's alternate exchange `{topology.unrouted.name}` (fanout) routes "
        f"it to the quorum queue `{topology.unrouted_queue.name}` (`x-queue`).",
        "messages": {UNKNOWN_COMMAND: _ref("components", "messages", UNKNOWN_COMMAND)},
        "bindings": {
            "amqp": _routing_key_binding(topology.unrouted, vhost, topology.unrouted_queue)
        },
    }
    messages[UNKNOWN_COMMAND_FAILED] = _event_message(
        "<routing key>.failed",
        "UnknownCommand for an unknown routing key made of plain dotted words.",
        payloads[UNKNOWN_COMMAND_FAILED],
    )
    reply_messages[UNKNOWN_COMMAND_FAILED] = _ref("components", "messages", UNKNOWN_COMMAND_FAILED)
    event_channels[f"events.{UNKNOWN_COMMAND_FAILED}"] = {
        "address": "{routingKey}.failed",
        "title": "Failures of unknown commands",
        "description": f"Routing key `<routing key>.failed` on `{topology.events.name}` for an "
        "unknown routing key of at most 8 dot-separated words of `[A-Za-z0-9_-]`.",
        "parameters": {"routingKey": {"description": "The unknown command's routing key."}},
        "messages": {
            UNKNOWN_COMMAND_FAILED: _ref("components", "messages", UNKNOWN_COMMAND_FAILED)
        },
        "bindings": {"amqp": _routing_key_binding(topology.events, vhost)},
    }
    operations["receive.unrouted"] = {
        "action": "receive",
        "channel": _ref("channels", "commands.unrouted"),
        "title": "Answer unknown commands",
        "summary": "Every command with an unknown routing key ends in an UnknownCommand event.",
        "description": f"Publishes `<routing key>.failed` when the routing key is plain dotted "
        f"words, else `{UNKNOWN_COMMAND_EVENT}`; the command is dead-lettered.",
        "messages": [_ref("channels", "commands.unrouted", "messages", UNKNOWN_COMMAND)],
        "reply": _reply([UNKNOWN_COMMAND_EVENT, UNKNOWN_COMMAND_FAILED]),
        "bindings": {"amqp": _receive_binding()},
    }
    add_event(
        UNKNOWN_COMMAND_EVENT,
        "UnknownCommand for a routing key that is not a plain dotted word sequence.",
    )
    operations[f"send.{UNKNOWN_COMMAND_FAILED}"] = {
        "action": "send",
        "channel": _ref("channels", f"events.{UNKNOWN_COMMAND_FAILED}"),
        "title": "Publish <routing key>.failed",
        "summary": "An unknown command failed.",
        "description": EVENT_PROPERTIES,
        "messages": [
            _ref("channels", f"events.{UNKNOWN_COMMAND_FAILED}", "messages", UNKNOWN_COMMAND_FAILED)
        ],
        "bindings": {"amqp": _publish_binding()},
    }

    dlq = topology.dead_letter_queue
    messages[DEAD_LETTER] = {
        "name": DEAD_LETTER,
        "title": "Dead letter",
        "summary": "A command the worker could not process, with headers saying why.",
        "description": "The command again, body and properties as received (`message_id` = the "
        "command id, `correlation_id`, `reply_to`, `content_type`), its headers kept (but for "
        "the broker's delivery bookkeeping), plus the `x-itwin-*` headers. Commands the "
        f"broker dead-letters itself (after `x-delivery-limit` = {settings.delivery_limit} "
        "redeliveries) reach the same queue through the dead-letter exchange and carry "
        "RabbitMQ's `x-death` headers instead.",
        "correlationId": _ref("components", "correlationIds", CORRELATION_ID),
        "headers": {
            "type": "object",
            "properties": {
                **{
                    name: {"type": "string", "description": text}
                    for name, text in DEAD_LETTER_HEADERS.items()
                },
                "traceparent": {
                    "type": "string",
                    "description": "The worker's span for the command, in its trace.",
                },
                "tracestate": {"type": "string", "description": "W3C Trace Context."},
            },
        },
        "payload": {"description": "The command's body exactly as received (maybe not JSON)."},
    }
    dead_letter_channel = {
        "address": dlq.name,
        "title": "Dead letters",
        "description": f"The quorum queue `{dlq.name}`: the worker publishes to it through the "
        f"default exchange; the broker dead-letters into it through the fanout exchange "
        f"`{topology.dead_letters.name}`.",
        "messages": {DEAD_LETTER: _ref("components", "messages", DEAD_LETTER)},
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": _queue(dlq, vhost),
                "x-queue": _x_queue(dlq, vhost),
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }
    operations["send.deadLetter"] = {
        "action": "send",
        "channel": _ref("channels", "deadLetters"),
        "title": "Dead-letter a command",
        "summary": "A command that failed with a fault, not with a clean API refusal.",
        "description": "Dead-lettered: `InvalidCommand`, `UnknownCommand`, `RetriesExhausted`, "
        "`Unauthorized`, `OutcomeUnknown`, `ResponseTooLarge`, `ResultTooLarge`, a 401 that "
        "survives a token refresh, a 5xx on a POST, an answer that is not the API's shape. "
        "Published (confirmed) before the failure event.",
        "messages": [_ref("channels", "deadLetters", "messages", DEAD_LETTER)],
        "bindings": {"amqp": _publish_binding()},
    }

    replies = {
        "address": None,
        "title": "Replies",
        "description": "The queue a command's `reply_to` names, through the default exchange: "
        "it gets a copy of the command's event when `REPLY_TO_PATTERN` allows the name "
        "(RabbitMQ direct reply-to always; the worker's own queues never).",
        "messages": reply_messages,
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {"type": "default", "vhost": vhost},
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "itwin-worker",
            "version": _version(),
            "description": "The RabbitMQ interface of itwin-worker: producers publish commands "
            "to the command exchange, the worker calls the iTwin Platform API and publishes "
            "exactly one event per recorded outcome on the event exchange. The public contract "
            "is `shared/design/contract.md`; the choices it leaves open are in docs/semantics.md. "
            "Generated from the command catalogue and models by `itwin-worker schemas`: do "
            "not edit.\n\n" + COMMAND_PROPERTIES,
        },
        "defaultContentType": JSON,
        "servers": {SERVER: _server(settings.amqp_url)},
        "channels": {
            **command_channels,
            **event_channels,
            "deadLetters": dead_letter_channel,
            REPLIES: replies,
        },
        "operations": operations,
        "components": {
            "schemas": components,
            "messages": messages,
            "correlationIds": {
                CORRELATION_ID: {
                    "description": "The AMQP `correlation_id` property (not an entry of the "
                    "headers table): set by the producer on a command (default: the command "
                    "id), copied to every event and dead letter it causes.",
                    "location": "$message.header#/correlation_id",
                }
            },
        },
    }


def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """`components.schemas` and each message's payload (a `$ref` into them).

    The schemas are `json_schemas.schemas()` without `$schema`, their `$defs` hoisted into
    `components.schemas` (a `#/$defs/...` reference inside a payload would point into the
    AsyncAPI document's root, not into the payload).
    """
    components: dict[str, Any] = {}
    payloads: dict[str, Any] = {}

    def add(name: str, schema: Any) -> None:
        if name in components and components[name] != schema:
            raise ValueError(f"two different schemas are both called {name!r}")
        components[name] = schema

    documents = json_schemas.schemas()
    for relative, document in documents.items():
        name = relative.split("/", 1)[1].removesuffix(".json")
        schema = _rewrite_refs({k: v for k, v in document.items() if k != "$schema"})
        for def_name, definition in schema.pop("$defs", {}).items():
            add(def_name, definition)
        add(name, schema)
        payloads[name] = _ref("components", "schemas", name)

    # One schema for every UnknownCommand event, whichever of its two types it has.
    payloads[UNKNOWN_COMMAND_FAILED] = payloads[UNKNOWN_COMMAND_EVENT]
    return components, payloads


def _query(fields: tuple[str, ...]) -> str:
    return f" (query: {', '.join(f'`{name}`' for name in fields)})" if fields else ""


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                _COMPONENT_SCHEMAS + value.removeprefix(_DEFS)
                if key == "$ref" and isinstance(value, str) and value.startswith(_DEFS)
                else _rewrite_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def _event_message(name: str, summary: str, payload: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": name,
        "title": f"{name} event",
        "summary": summary,
        "description": EVENT_PROPERTIES,
        "contentType": JSON,
        "correlationId": _ref("components", "correlationIds", CORRELATION_ID),
        "headers": _ref("components", "schemas", json_schemas.EVENT_TRACE_HEADERS),
        "payload": payload,
        "bindings": {"amqp": {"bindingVersion": AMQP_BINDING_VERSION}},
    }
    if "<" not in name:
        message["bindings"]["amqp"] = {"messageType": name, **message["bindings"]["amqp"]}
    return message


def _reply(events: list[str]) -> dict[str, Any]:
    return {
        "address": {
            "location": "$message.header#/reply_to",
            "description": "The command's AMQP `reply_to` property, when set.",
        },
        "channel": _ref("channels", REPLIES),
        "messages": [_ref("channels", REPLIES, "messages", name) for name in events],
    }


def _routing_key_binding(
    exchange: RabbitExchange, vhost: str, queue: RabbitQueue | None = None
) -> dict[str, Any]:
    binding: dict[str, Any] = {
        "is": "routingKey",
        "exchange": {
            "name": exchange.name,
            "type": exchange.type.value,
            "durable": exchange.durable,
            "autoDelete": exchange.auto_delete,
            "vhost": vhost,
        },
    }
    if queue is not None:
        binding["x-queue"] = _x_queue(queue, vhost)
    binding["bindingVersion"] = AMQP_BINDING_VERSION
    return binding


def _queue(queue: RabbitQueue, vhost: str) -> dict[str, Any]:
    return {
        "name": queue.name,
        "durable": queue.durable,
        "exclusive": queue.exclusive,
        "autoDelete": queue.auto_delete,
        "vhost": vhost,
    }


def _x_queue(queue: RabbitQueue, vhost: str) -> dict[str, Any]:
    return {**_queue(queue, vhost), "arguments": dict(queue.arguments or {})}


def _receive_binding() -> dict[str, Any]:
    return {"ack": True, "deliveryMode": 2, "bindingVersion": AMQP_BINDING_VERSION}


def _publish_binding() -> dict[str, Any]:
    return {"deliveryMode": 2, "mandatory": False, "bindingVersion": AMQP_BINDING_VERSION}


def _ref(*parts: str) -> dict[str, str]:
    escaped = (part.replace("~", "~0").replace("/", "~1") for part in parts)
    return {"$ref": "#/" + "/".join(escaped)}


def _server(amqp_url: str) -> dict[str, Any]:
    """The broker of `amqp_url`, without its credentials."""
    url = urlsplit(amqp_url)
    secure = url.scheme == "amqps"
    host = url.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return {
        "host": f"{host}:{url.port or (5671 if secure else 5672)}",
        "protocol": url.scheme or "amqp",
        "protocolVersion": "0.9.1",
        "description": "The broker named by `ITWIN_WORKER_AMQP_URL` (default shown). The worker "
        "declares the exchanges and queues below at start-up, idempotently.",
    }


def _vhost(amqp_url: str) -> str:
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _version() -> str:
    try:
        return version("itwin-worker")
    except PackageNotFoundError:
        return "0.1.0"
