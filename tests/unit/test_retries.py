"""Which failed calls the ingress retries, how often and how long it waits (serving.faults, front/calls._retried)."""

from __future__ import annotations

import asyncio

import pytest

from serving.errors import TideError, bad_request, engine_dead
from serving.faults import engine_died, replica_gone, retry_wait_s
from serving.front.calls import _retried


class ActorDiedError(Exception):
    """Named as Ray's: the replica actor went away."""


def _run(errors: list[BaseException], retries: int, deadline_s: float = 30.0):
    calls, retried = [], []

    async def once(left: float) -> str:
        calls.append(left)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"

    async def main():
        return await _retried(once, deadline_s, retries, retried.append)

    return asyncio.run(main()), calls, retried


def test_engine_died_sees_through_wrappers():
    wrapped = RuntimeError("task failed")
    wrapped.__cause__ = engine_dead()
    assert engine_died(engine_dead()) and engine_died(wrapped)
    assert not engine_died(ActorDiedError()) and replica_gone(ActorDiedError())
    assert not engine_died(bad_request("x")) and not engine_died(ValueError())


def test_retry_waits_double_and_are_capped():
    assert [retry_wait_s(i) for i in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


def test_a_replica_that_went_away_is_retried_up_to_the_limit():
    assert _run([ActorDiedError()], retries=2)[0] == "ok"
    with pytest.raises(ActorDiedError):
        _run([ActorDiedError()] * 3, retries=2)


def test_a_dead_engine_is_retried_past_the_limit_with_waits_until_the_replacement_answers(monkeypatch):
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    result, calls, retried = _run([engine_dead()] * 5, retries=2)
    assert result == "ok" and len(calls) == 6 and len(retried) == 5
    assert slept == [0.25, 0.5, 1.0, 2.0, 2.0]


def test_a_bad_request_is_never_retried():
    with pytest.raises(TideError):
        _run([bad_request("no")], retries=2)


def test_the_deadline_ends_the_retries():
    async def main():
        async def once(left: float) -> str:
            raise engine_dead()

        return await _retried(once, 0.3, 0, lambda e: None)

    with pytest.raises(TideError):
        asyncio.run(main())
