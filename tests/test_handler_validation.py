"""``validate_handler``: what a Worker accepts as a handler, and the errors for the rest."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from goworker_py.errors import ConfigError, InvalidHandlerError
from goworker_py.handler import Context, Handler, validate_handler
from goworker_py.instance import WatchInfo

pytestmark = pytest.mark.timeout(30)


class Good(Handler):
    def do(self, ctx: Context) -> None:
        pass


class GoodWithHooks(Handler):
    def before(self, ctx: Context) -> None:
        pass

    def do(self, ctx: Context) -> None:
        pass

    def after(self, ctx: Context) -> None:
        pass

    def error_message(self, ctx: Context, err: BaseException) -> None:
        pass

    def watch(self, info: WatchInfo) -> None:
        pass


class Duck:
    """Not a Handler subclass, but has a callable ``do``."""

    def do(self, ctx: Context) -> None:
        pass


class KeywordDefaults(Handler):
    def __init__(self, *, retries: int = 3) -> None:
        self.retries = retries

    def do(self, ctx: Context) -> None:
        pass


class NeedsArgs(Handler):
    def __init__(self, connection: str) -> None:
        self.connection = connection

    def do(self, ctx: Context) -> None:
        pass


class NoDo(Handler):
    def before(self, ctx: Context) -> None:
        pass


class DuckWithoutDo:
    def run(self) -> None:
        pass


class DoNotCallable:
    do = 3


def _do(ctx: Context) -> None:
    pass


class AsyncHooks(Handler):
    """Every method ``async def``: accepted, the worker runs each on the shard's loop."""

    async def before(self, ctx: Context) -> None:
        pass

    async def do(self, ctx: Context) -> None:
        pass

    async def after(self, ctx: Context) -> None:
        pass

    async def error_message(self, ctx: Context, err: BaseException) -> None:
        pass

    async def watch(self, info: WatchInfo) -> None:
        pass


class AsyncDuck:
    async def do(self, ctx: Context) -> None:
        pass


async def _async_do(ctx: Context) -> None:
    pass


@pytest.mark.parametrize(
    "handler",
    [
        Good,
        Good(),
        GoodWithHooks,
        GoodWithHooks(),
        Duck,
        Duck(),
        KeywordDefaults,
        NeedsArgs("db://"),  # an instance is fine: nothing needs constructing
        types.SimpleNamespace(do=_do),
        types.SimpleNamespace(do=_do, before=_do, after=None),  # None means "no hook"
        AsyncHooks,
        AsyncHooks(),
        AsyncDuck,
        AsyncDuck(),
        types.SimpleNamespace(do=_async_do, before=_do),
    ],
    ids=lambda h: h.__name__ if isinstance(h, type) else f"{type(h).__name__}()",
)
def test_accepted(handler: Any) -> None:
    validate_handler(handler)


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (Handler, "handler class Handler must override do(ctx)"),
        (Handler(), "handler Handler must override do(ctx)"),
        (NoDo, "handler class NoDo must override do(ctx)"),
        (NoDo(), "handler NoDo must override do(ctx)"),
        (DuckWithoutDo, "with a do(ctx) method"),
        (DuckWithoutDo(), "with a do(ctx) method"),
        (DoNotCallable, "with a do(ctx) method"),
        (DoNotCallable(), "with a do(ctx) method"),
        (_do, "with a do(ctx) method"),  # a bare function is not a handler
        (None, "got None"),
        ("MyHandler", "got 'MyHandler'"),
        (b"MyHandler", "got b'MyHandler'"),
        (42, "got 42"),
        (1.5, "got 1.5"),
        (True, "got True"),
        (int, "with a do(ctx) method"),
        (object(), "with a do(ctx) method"),
    ],
    ids=repr,
)
def test_rejected(handler: Any, message: str) -> None:
    with pytest.raises(InvalidHandlerError) as info:
        validate_handler(handler)
    assert message in str(info.value)


@pytest.mark.parametrize("hook", ["before", "after", "error_message", "watch"])
def test_non_callable_hooks_are_rejected_on_classes_and_instances(hook: str) -> None:
    bad = type("BadHook", (Handler,), {"do": lambda self, ctx: None, hook: "not a method"})
    for handler in (bad, bad()):
        with pytest.raises(InvalidHandlerError) as info:
            validate_handler(handler)
        assert f"handler attribute {hook!r} must be a method" in str(info.value)
        assert "'not a method'" in str(info.value)


def test_non_callable_hook_on_a_duck_typed_object() -> None:
    with pytest.raises(InvalidHandlerError, match="'after' must be a method"):
        validate_handler(types.SimpleNamespace(do=_do, after=1))


def test_a_class_needing_constructor_arguments_is_rejected_with_a_hint() -> None:
    with pytest.raises(InvalidHandlerError) as info:
        validate_handler(NeedsArgs)
    message = str(info.value)
    assert "NeedsArgs must be constructible without arguments" in message
    assert "connection" in message  # the missing argument is named
    assert "pass an instance instead" in message


def test_invalid_handler_error_is_a_config_error() -> None:
    assert issubclass(InvalidHandlerError, ConfigError)
    with pytest.raises(ConfigError):
        validate_handler(None)


async def _async_generator(self: Any, ctx: Context) -> AsyncIterator[None]:
    yield None


def _generator(self: Any, ctx: Context) -> Iterator[None]:
    yield None


@pytest.mark.parametrize("method", ["do", "before", "after", "error_message", "watch"])
@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (_async_generator, "an async generator (async def with yield)"),
        (_generator, "a generator (def with yield)"),
    ],
    ids=["async-generator", "generator"],
)
def test_generator_methods_are_rejected(method: str, body: Any, kind: str) -> None:
    """Calling a generator method returns a generator without running its body."""
    methods = {"do": lambda self, ctx: None, method: body}
    bad = type("Streams", (Handler,), methods)
    for handler in (bad, bad()):
        with pytest.raises(InvalidHandlerError) as info:
            validate_handler(handler)
        assert f"Streams.{method} is {kind}" in str(info.value)
        assert "never run its body" in str(info.value)
