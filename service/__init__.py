"""itwin-worker: a RabbitMQ worker for the Bentley iTwin Platform APIs.

The public names: the settings, the command catalogue, the event models and the exception
tree (whose classes say which failures are retriable and which are dead-lettered).
"""

from service.commands import BY_ROUTING_KEY, COMMANDS, ApiRequest, CommandSpec
from service.errors import (
    ApiError,
    InvalidCommand,
    OutcomeUnknown,
    RateLimited,
    RetriesExhausted,
    TransientError,
    Unauthorized,
    UnknownCommand,
    WorkerError,
)
from service.events import EventError, FailureEvent, SuccessEvent
from service.settings import Settings, SettingsError, load_settings

__all__ = [
    "BY_ROUTING_KEY",
    "COMMANDS",
    "ApiError",
    "ApiRequest",
    "CommandSpec",
    "EventError",
    "FailureEvent",
    "InvalidCommand",
    "OutcomeUnknown",
    "RateLimited",
    "RetriesExhausted",
    "Settings",
    "SettingsError",
    "SuccessEvent",
    "TransientError",
    "Unauthorized",
    "UnknownCommand",
    "WorkerError",
    "load_settings",
]
