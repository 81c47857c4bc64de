"""The resolver chain: small stages, each answering a query or handing it to the next one.

A stage's `resolve` returns the answer bytes when it can answer at once (a block, a special
name, a cache hit), None to send nothing, or an awaitable when the answer has to come from
upstream. Keeping the immediate answers synchronous keeps the common cases off the event
loop's task machinery; `then` chains work after either kind of result.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

from schoolgate.dns.wire import Query

Answer: TypeAlias = bytes | None
Result: TypeAlias = Answer | Awaitable[Answer]

T = TypeVar("T")


class Stage:
    """One link. Subclasses override `resolve`; the default passes the query along.

    `pass_on(query)` is the next stage's `resolve` itself, bound when the stages are linked:
    every query goes through every stage, and a call saved per stage is a tenth of the cost
    of a cached answer.
    """

    name = "stage"

    def __init__(self) -> None:
        self._next: Stage | None = None

    @property
    def next(self) -> Stage | None:
        return self._next

    @next.setter
    def next(self, stage: Stage | None) -> None:
        self._next = stage
        if stage is None:
            self.__dict__.pop("pass_on", None)
        else:
            self.pass_on = stage.resolve  # type: ignore[method-assign]

    def resolve(self, query: Query) -> Result:
        return self.pass_on(query)

    def pass_on(self, query: Query) -> Result:
        raise RuntimeError(f"{self.name}: the chain ends here")


def is_ready(result: Result) -> bool:
    return result is None or type(result) is bytes or isinstance(result, bytearray)


def then(result: Result, after: Callable[[Answer], Answer]) -> Result:
    """Apply `after` to the answer, now or when it arrives."""
    if is_ready(result):
        return after(result)  # type: ignore[arg-type]
    return _later(result, after)  # type: ignore[arg-type]


async def _later(pending: Awaitable[Answer], after: Callable[[Answer], Answer]) -> Answer:
    return after(await pending)


async def settle(result: Result) -> Answer:
    """Await the result if it is pending (for tests and sub-queries)."""
    if inspect.isawaitable(result):
        return await result
    return result


def link(stages: list[Stage]) -> Stage:
    """Join stages in order; returns the first."""
    for current, following in itertools.pairwise(stages):
        current.next = following
    return stages[0]
