"""Command-line options of `itwin-worker simulator`, for the package CLI to mount.

Each config flag is one row of `_FLAGS`, so the option, its help and the config field it sets
cannot drift apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from .config import SimulatorConfig
from .server import DEFAULT_HOST, DEFAULT_PORT


@dataclass(frozen=True)
class _Flag:
    option: str
    field: str
    type: Callable[[str], Any] | None
    help: str


_FLAGS = (
    _Flag("--token-lifetime", "token_lifetime_seconds", int, "token lifetime in seconds"),
    _Flag("--issuer", "issuer", str, "the tokens' iss (default: the URL a client calls)"),
    _Flag("--rate-limit", "rate_limit_per_second", float, "own per-client limit, calls/second"),
    _Flag("--burst", "rate_limit_burst", int, "own per-client limit, burst size"),
    _Flag("--retry-after", "retry_after_seconds", int, "least retry-after of an own-limit 429"),
    _Flag("--latency-ms", "latency_ms", float, "delay added to every API call"),
    _Flag("--jitter-ms", "jitter_ms", float, "random extra delay, uniform 0..N ms"),
    _Flag("--error-rate", "error_rate", float, "fraction of API calls answered 500/503"),
    _Flag("--hang-rate", "hang_rate", float, "fraction of API calls that hang"),
    _Flag("--hang-seconds", "hang_seconds", float, "how long a hung call hangs"),
    _Flag(
        "--drop-after-rate",
        "drop_after_rate",
        float,
        "fraction of API calls that take effect, then lose their answer (connection closed)",
    ),
    _Flag("--engine-limit", "engine_limit", int, "largest settings.processingEngines of a job"),
    _Flag("--job-duration", "job_duration_seconds", float, "simulated seconds a job runs"),
    _Flag("--time-scale", "time_scale", float, "real seconds per simulated job second"),
    _Flag("--job-outcome", "job_outcome", str, "how submitted jobs end: success or failed"),
    _Flag("--token-endpoint-down", "token_endpoint_down", None, "token endpoint answers 503"),
    _Flag("--library-forbidden", "library_forbidden", None, "Library writes: 403"),
)


def _client(value: str) -> tuple[str, str]:
    client_id, colon, secret = value.partition(":")
    if not (client_id and colon and secret):
        raise argparse.ArgumentTypeError("expected CLIENT_ID:SECRET")
    return client_id, secret


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options; unset ones keep `SimulatorConfig`'s defaults."""
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    parser.add_argument(
        "--client",
        dest="clients",
        type=_client,
        action="append",
        metavar="ID:SECRET",
        help="accepted client credentials (repeatable; default demo-client:demo-secret)",
    )
    for flag in _FLAGS:
        if flag.type is None:
            parser.add_argument(
                flag.option, dest=flag.field, action="store_true", default=None, help=flag.help
            )
        else:
            parser.add_argument(flag.option, dest=flag.field, type=flag.type, help=flag.help)


def config_from_args(ns: argparse.Namespace) -> SimulatorConfig:
    """The config the options describe; ValueError names the offending option."""
    fields: dict[str, Any] = {
        flag.field: getattr(ns, flag.field)
        for flag in _FLAGS
        if getattr(ns, flag.field) is not None
    }
    if ns.clients:
        fields["clients"] = dict(ns.clients)
    try:
        return SimulatorConfig(**fields)
    except ValidationError as error:
        options = {flag.field: flag.option for flag in _FLAGS} | {"clients": "--client"}
        problems = [
            f"{options.get(str(item['loc'][0]), item['loc'][0])}: {item['msg']}"
            for item in error.errors()
        ]
        raise ValueError("; ".join(problems)) from None
