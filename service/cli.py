"""`itwin-worker`: run the worker, the API simulator, send a command, or run the demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import uvloop

from service import configuration_doc, contract, heap, logs, simulator
from service.app import Worker
from service.commands import BY_ROUTING_KEY
from service.dlq import DeadLetters, amqp_user
from service.jobs import PROGRESS_EVENTS, TERMINAL_EVENTS
from service.producer import BrokerUnreachable, Producer
from service.settings import Settings, SettingsError, load_settings
from service.trust import printable

DEMO_ITWIN = "60805594-3e04-43b5-8fd8-5ccae0de23cc"
DEMO_MODELING_JOB = {
    "type": "Reconstruction",
    "name": "Demo v2 reconstruction",
    "iTwinId": DEMO_ITWIN,
    "specifications": {
        "inputs": {"scene": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4"},
        "outputs": {"modelingReference": True, "exports": [{"format": "3DTiles"}]},
        "options": {"tilingMode": "Adaptive", "geometricPrecision": "High"},
    },
}
START_RABBITMQ = "start one with `rabbitmq-server -detached` or point ITWIN_WORKER_AMQP_URL at one"


def _broker_unreachable(settings: Settings, exc: Exception) -> int:
    url = logs.SecretRedactor().scrub(settings.amqp_url)
    print(f"error: cannot reach RabbitMQ at {url} ({exc}); {START_RABBITMQ}", file=sys.stderr)
    return 2


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    # Handlers first: a SIGTERM while the worker is still starting is a clean stop too.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    worker = Worker(settings)
    # Before consuming: its full collection pauses the loop; run with commands in flight, it
    # lost records in test_delivery's Redis Cluster case (2 runs in 9).
    heap.settle()
    try:
        await worker.start()
    except (OSError, ConnectionError) as exc:
        return _broker_unreachable(settings, exc)
    await stop.wait()
    await worker.stop()
    return 0


async def _simulator(settings: Settings, args: argparse.Namespace) -> int:
    config = simulator.config_from_args(args)
    server = asyncio.ensure_future(simulator.serve(config, args.host, args.port))
    # As a container's PID 1 the simulator gets no default SIGTERM disposition: without a
    # handler Kubernetes would wait out the grace period and SIGKILL it.
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.cancel)
    print(f"iTwin API simulator on http://{args.host}:{args.port}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await server
    return 0


async def _send(settings: Settings, args: argparse.Namespace) -> int:
    try:
        async with Producer(settings.amqp_url, settings.command_exchange) as producer:
            message_id = await producer.publish(
                args.routing_key,
                args.body.encode(),
                message_id=args.message_id,
                correlation_id=args.correlation_id,
                reply=args.wait,
            )
            if not args.wait:
                print(json.dumps({"published": message_id, "routingKey": args.routing_key}))
                return 0
            async with asyncio.timeout(args.timeout):
                event = await _until_settled(producer, args.routing_key, message_id, _print_json)
            return 0 if "result" in event else 1
    except BrokerUnreachable as exc:
        return _broker_unreachable(settings, exc)
    except TimeoutError:
        print(f"error: no event within {args.timeout} s", file=sys.stderr)
        return 3


async def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    letters = DeadLetters(settings.amqp_url, settings.dead_letter_queue, settings.replay_exchange)
    try:
        if args.dlq_action == "list":
            found = await letters.entries()
            for letter in found:
                print(
                    f"{letter.command_id}  {letter.routing_key:<20} {letter.error_code or '-':<18}"
                    f" {letter.reason:<8} {letter.failed_at or '-'}  {letter.error_message}"
                )
            print(f"{len(found)} dead-lettered command(s)")
        else:
            # Only operators may write to the replay exchange: say whose rights were used.
            user = printable(amqp_user(settings.amqp_url))
            print(f"replaying to {settings.replay_exchange} as RabbitMQ user {user}")
            replayed = await letters.replay(args.ids)
            for letter in replayed:
                print(f"replayed {letter.command_id} to {letter.routing_key}")
            print(f"{len(replayed)} command(s) replayed")
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPConnectionError) as exc:
        return _broker_unreachable(settings, exc)
    except aio_pika.exceptions.ChannelClosed as exc:
        # ACCESS_REFUSED (a user without the operators' rights) or NOT_FOUND (no worker has
        # declared the topology yet); the message it stopped at stays in the queue.
        print(f"error: RabbitMQ refused: {exc}", file=sys.stderr)
        return 2
    return 0


async def _until_settled(
    producer: Producer,
    routing_key: str,
    message_id: str,
    show: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Show each event of the command until it has nothing more to say; return the last."""
    n = 0
    while True:
        event = await producer.nth_event(message_id, n)
        show(event)
        if not _more_to_come(routing_key, event):
            return event
        n += 1


def _print_json(event: dict[str, Any]) -> None:
    print(json.dumps(event, indent=2), flush=True)


def _more_to_come(routing_key: str, event: dict[str, Any]) -> bool:
    """A command that follows a job goes on with its progress until its terminal event."""
    following = BY_ROUTING_KEY.get(routing_key)
    if following is None or following.follows is None or "error" in event:
        return False
    return event["type"] not in TERMINAL_EVENTS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _wait_for_port(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
            else:
                writer.close()
                return


def _show(event: dict[str, Any]) -> None:
    ok = "result" in event
    mark = "OK  " if ok else "FAIL"
    print(f"{mark} {event['type']:<26} command {event['commandId']}  attempts {event['attempts']}")
    if event["type"] in PROGRESS_EVENTS:
        progress = event["result"]
        step = progress.get("step", "")  # v2 progress has no step
        print(f"     {progress['percentage']:>3} %  {progress['state']:<19} {step}")
        return
    detail = json.dumps(event["result" if ok else "error"], indent=2)
    print("     " + detail.replace("\n", "\n     "), flush=True)


async def _demo(base: Settings, args: argparse.Namespace) -> int:
    # The demo prints the events; the worker's own log lines would only bury them.
    logs.configure("WARNING", "console")
    port = _free_port()
    # A simulated hour-long job would bore anyone: the demo's takes 4 seconds.
    config = simulator.SimulatorConfig(time_scale=0.0667)
    client_id, client_secret = next(iter(config.clients.items()))
    server = asyncio.create_task(simulator.serve(config, "127.0.0.1", port))
    await _wait_for_port(port)
    api = f"http://127.0.0.1:{port}"
    settings = load_settings(
        **{
            **base.model_dump(),
            "api_base_url": api,
            "token_url": f"{api}/connect/token",
            "client_id": client_id,
            "client_secret": client_secret,
            "job_poll_schedule": [0.5, 1.0, 2.0],
        }
    )
    print(f"simulator on {api}; worker on {logs.SecretRedactor().scrub(settings.amqp_url)}\n")
    worker = Worker(settings)
    try:
        await worker.start()
    except (OSError, ConnectionError) as exc:
        server.cancel()
        return _broker_unreachable(settings, exc)
    try:
        async with (
            Producer(settings.amqp_url, settings.command_exchange) as producer,
            asyncio.timeout(60),
        ):
            events = await _demo_commands(producer)
            for event in events:
                _show(event)
            successes = sum("result" in event for event in events)
            print(f"\n{successes} succeeded, {len(events) - successes} failed (one expected)\n")
            job_id = events[2].get("result", {}).get("id", "missing")
            print(f"Job lifecycle: job.submit {job_id}, followed to its end\n")
            submit = json.dumps({"jobId": job_id}).encode()
            message_id = await producer.publish("job.submit", submit)
            last = await _until_settled(producer, "job.submit", message_id, _show)
            print(f"\njob {job_id} ended with {last['type']}\n")
            print("Reality Modeling v2: modeling.job.create, followed from its creation\n")
            created = json.dumps(DEMO_MODELING_JOB).encode()
            message_id = await producer.publish("modeling.job.create", created)
            modeled = await _until_settled(producer, "modeling.job.create", message_id, _show)
            print(f"\nv2 job ended with {modeled['type']}\n")
            print("Cleaning up: the application, the repository, the workspace\n")
            cleanup = await _demo_cleanup(producer, events)
            for event in cleanup:
                _show(event)
    finally:
        await worker.stop()
        server.cancel()
    cleaned = all("result" in event for event in cleanup)
    expected = (5, 6, "job.succeeded", "modeling.job.succeeded", True)
    outcome = (successes, len(events), last["type"], modeled["type"], cleaned)
    return 0 if outcome == expected else 1


async def _demo_cleanup(producer: Producer, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Delete what the demo made (a submitted job cannot be deleted; its workspace can)."""

    def made(index: int) -> str:
        return str(events[index].get("result", {}).get("id", "missing"))

    deletions = [
        ("application.delete", {"applicationId": made(4)}),
        ("repository.delete", {"iTwinId": DEMO_ITWIN, "repositoryId": made(3)}),
        ("workspace.delete", {"workspaceId": made(0)}),
    ]
    return [
        await producer.request(routing_key, json.dumps(document).encode())
        for routing_key, document in deletions
    ]


async def _demo_commands(producer: Producer) -> list[dict[str, Any]]:
    def body(document: dict[str, Any]) -> bytes:
        return json.dumps(document).encode()

    created = await producer.request(
        "workspace.create",
        body({"name": "Demo workspace", "iTwinId": DEMO_ITWIN}),
    )
    workspace_id = created.get("result", {}).get("id", "missing")
    job = {
        "type": "Full",
        "name": "Demo reconstruction",
        "workspaceId": workspace_id,
        "inputs": [{"id": "58e0c0ca-f730-4e5b-808d-1c8cacacb4d4", "description": "Drone images"}],
        "settings": {"quality": "Extra", "processingEngines": 5, "outputs": ["OBJ", "3MX"]},
        "costEstimationParameters": {"gigaPixels": 2.5, "megaPoints": 1.5, "meshQuality": "Extra"},
    }
    repository = {
        "iTwinId": DEMO_ITWIN,
        "class": "GeographicInformationSystem",
        "subClass": "WebMapTileService",
        "uri": "https://tiles.example.com/wmts",
    }
    rest = [
        ("workspace.get", {"workspaceId": workspace_id}),
        ("job.create", job),
        ("repository.create", repository),
        ("application.create", {"displayName": "Revit", "version": "2019"}),
        ("application.create", {"displayName": "Revit <script>", "version": "2019"}),
    ]
    events = [created]
    for routing_key, document in rest:
        events.append(await producer.request(routing_key, body(document)))
    return events


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itwin-worker",
        description="RabbitMQ worker for the Bentley iTwin Platform APIs (see README.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the worker until SIGTERM")
    simulator.add_arguments(
        commands.add_parser("simulator", help="run the offline iTwin API simulator")
    )
    send = commands.add_parser(
        "send",
        help="publish one command, optionally wait for its event",
        description="Publish one command. Routing keys: " + ", ".join(BY_ROUTING_KEY) + ".",
    )
    send.add_argument("routing_key", help="e.g. workspace.create (any key is sent as given)")
    send.add_argument("body", help="the command body, JSON text, sent as given")
    send.add_argument("--wait", action="store_true", help="wait for the event and print it")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (30)")
    send.add_argument("--message-id", help="command id (default: a new UUID)")
    send.add_argument("--correlation-id", help="correlation id (default: the command id)")
    commands.add_parser(
        "demo", help="simulator + worker + one command of each kind, then cleaning up"
    )
    dlq = commands.add_parser("dlq", help="inspect or replay the dead-letter queue")
    dlq_actions = dlq.add_subparsers(dest="dlq_action", required=True)
    dlq_actions.add_parser("list", help="show each dead-lettered command and why")
    replay = dlq_actions.add_parser(
        "replay", help="send dead-lettered commands back, through the replay exchange"
    )
    replay.add_argument("--id", action="append", dest="ids", help="only this command id")
    schemas = commands.add_parser("schemas", help="write the JSON Schemas of the contract")
    schemas.add_argument("directory", nargs="?", default="schemas", type=Path)
    settings_doc = commands.add_parser(
        "settings-doc", help="write docs/configuration.md from the settings"
    )
    settings_doc.add_argument("path", nargs="?", default=configuration_doc.DEFAULT_PATH, type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    secret = settings.client_secret.get_secret_value() if settings.client_secret else ""
    logs.configure(settings.log_level, settings.log_format, known_secrets=[secret])
    if args.command == "schemas":
        contract.write(args.directory)
        return 0
    if args.command == "settings-doc":
        configuration_doc.write(args.path)
        return 0
    runners = {
        "run": _run,
        "simulator": _simulator,
        "send": _send,
        "demo": _demo,
        "dlq": _dlq,
    }
    try:
        # uvloop: +13 % commands/s with a 50 ms API, within noise at 0 ms (bench/throughput).
        return uvloop.run(runners[args.command](settings, args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
