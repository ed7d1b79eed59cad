"""``@ratelimit`` for function views, class-based views and async views.

    from ratelimit.decorators import ratelimit

    @ratelimit(key="user_or_ip", rate="5/m", algorithm="token_bucket")
    def login(request): ...

    class Search(View):
        @ratelimit(rate="30/m", method="GET")
        def get(self, request): ...

``storage=`` picks a storage for this view (default ``RATELIMIT["STORAGE"]``). ``block=True``
(the default) answers 429 over the limit; ``block=False`` lets the view run
with ``request.limited`` set. Limited responses carry the RateLimit headers either way. The
group defaults to the view's dotted name; ``group=`` shares a counter between views.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest

from ratelimit import core


def _request_of(args: tuple[Any, ...]) -> Any:
    """The request among a view's arguments: the first, or the second for a method."""
    for arg in args[:2]:
        if isinstance(arg, HttpRequest) or hasattr(arg, "META"):
            return arg
    raise TypeError("@ratelimit needs a view whose first or second argument is the request")


def _finish(request: Any, result: core.Result | None, block: bool) -> Any:
    """None to run the view, or the 429 answer."""
    limited = result is not None and not result.allowed
    request.limited = getattr(request, "limited", False) or limited
    if limited and block:
        assert result is not None
        return core.too_many(result)
    return None


def _headed(response: Any, result: core.Result | None) -> Any:
    if result is not None and hasattr(response, "__setitem__"):
        for name, value in result.headers.items():
            response[name] = value
    return response


def ratelimit(
    *,
    rate: str,
    key: Any = None,
    algorithm: str | None = None,
    group: str | None = None,
    method: str | Iterable[str] | None = None,
    block: bool = True,
    burst: int | None = None,
    cost: int = 1,
    storage: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        limit = core.Limit.build(
            rate=rate,
            key=key,
            algorithm=algorithm,
            group=group or f"{view.__module__}.{view.__qualname__}",
            method=method,
            burst=burst,
            cost=cost,
            storage=storage,
        )

        if inspect.iscoroutinefunction(view):

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                request = _request_of(args)
                result = await sync_to_async(core.check, thread_sensitive=False)(request, limit)
                denied = _finish(request, result, block)
                if denied is not None:
                    return denied
                return _headed(await view(*args, **kwargs), result)

            async_wrapper.ratelimit = limit  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = _request_of(args)
            result = core.check(request, limit)
            denied = _finish(request, result, block)
            if denied is not None:
                return denied
            return _headed(view(*args, **kwargs), result)

        wrapper.ratelimit = limit  # type: ignore[attr-defined]
        return wrapper

    return decorate
