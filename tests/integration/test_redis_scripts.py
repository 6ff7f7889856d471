"""The worker's own Redis connection against a real Redis: answers reach their callers in
order, whatever is cancelled or fails, and a lost connection is reported and replaced."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from service.redis_scripts import ScriptConnection
from tests.integration.conftest import REDIS_URL, free_port


async def test_many_calls_in_flight_each_get_their_own_answer(scripts: ScriptConnection) -> None:
    answers = await asyncio.gather(*(scripts.call("ECHO", f"n{i}") for i in range(300)))
    assert answers == [f"n{i}".encode() for i in range(300)]


async def test_a_script_unknown_to_redis_is_sent_whole_then_runs_by_its_sha(
    scripts: ScriptConnection, redis: Redis, redis_prefix: str
) -> None:
    # A comment no other run has used: Redis cannot have this script cached yet.
    source = f"-- {uuid.uuid4()}\nreturn {{KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}}"
    script = scripts.register_script(source)
    key = f"{redis_prefix}:script:{uuid.uuid4().hex}"
    assert await script(keys=[key], args=[b"\x00bytes\r\n"]) == [key.encode(), b"\x00bytes\r\n", 1]
    assert await script(keys=[key], args=[7]) == [key.encode(), b"7", 2]
    assert (await redis.script_exists(script._sha)) == [True]


async def test_an_error_answer_is_a_response_error_and_the_connection_goes_on(
    scripts: ScriptConnection,
) -> None:
    failing = scripts.register_script("return redis.error_reply('ItwinTest no luck')")
    with pytest.raises(ResponseError, match="no luck"):
        await failing(keys=[], args=[])
    assert await scripts.call("PING") == b"PONG"


async def test_a_cancelled_caller_does_not_take_the_next_callers_answer(
    scripts: ScriptConnection, redis_prefix: str
) -> None:
    blocked = asyncio.create_task(scripts.call("BLPOP", f"{redis_prefix}:empty", 0.3))
    await asyncio.sleep(0.05)
    blocked.cancel()
    assert await scripts.call("ECHO", "mine") == b"mine"


async def test_a_lost_connection_fails_the_calls_in_flight_and_the_next_call_reconnects(
    scripts: ScriptConnection, redis: Redis, redis_prefix: str
) -> None:
    ours = await scripts.call("CLIENT", "ID")
    waiting = asyncio.create_task(scripts.call("BLPOP", f"{redis_prefix}:empty", 5))
    await asyncio.sleep(0.05)
    await redis.client_kill_filter(_id=ours)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 2)
    assert await scripts.call("CLIENT", "ID") != ours


async def test_the_url_chooses_the_database_and_the_user(redis: Redis, redis_prefix: str) -> None:
    user, password = f"{redis_prefix}-user", uuid.uuid4().hex
    await redis.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=[f"{redis_prefix}:*"],
        commands=["+set", "+get", "+del", "+select", "+ping"],
    )  # fmt: skip
    key = f"{redis_prefix}:db:{uuid.uuid4().hex}"
    authorised = ScriptConnection(f"redis://{user}:{password}@127.0.0.1:6379/5")
    try:
        assert await authorised.call("SET", key, "in five") == b"OK"
        assert await redis.get(key) is None
        in_five = Redis.from_url(f"{REDIS_URL.rsplit('/', 1)[0]}/5")
        assert await in_five.get(key) == b"in five"
        await in_five.delete(key)
        await in_five.aclose()
        refused = ScriptConnection(f"redis://{user}:wrong@127.0.0.1:6379/5")
        with pytest.raises(AuthenticationError):
            await refused.call("PING")
        await refused.aclose()
    finally:
        await authorised.aclose()
        await redis.acl_deluser(user)


async def test_nobody_listening_is_a_connection_error() -> None:
    port = free_port()
    nowhere = ScriptConnection(f"redis://127.0.0.1:{port}/0")
    with pytest.raises(ConnectionError):
        await nowhere.call("PING")


async def test_a_redis_that_stops_answering_fails_its_callers_in_time() -> None:
    """A server that accepts and reads but never answers (a hung Redis, or one gone without a
    FIN): the calls fail after the answer timeout, and the connection is replaced."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        hung = ScriptConnection(f"redis://127.0.0.1:{port}/0", answer_timeout=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisTimeout):
            await asyncio.gather(hung.call("PING"), hung.call("PING"))
        assert asyncio.get_running_loop().time() - started < 2.0
        with pytest.raises(RedisTimeout):
            await hung.call("PING")
        assert len(accepted) == 2
        await hung.aclose()
        for writer in accepted:
            writer.close()
