"""``swarmless.App``: Python functions that run in containers, without an image each.

>>> app = swarmless.App("demo")                                    # doctest: +SKIP
>>> @app.function(timeout=60)
... def square(x):
...     return x * x
>>> with app.run():
...     square.remote(7), list(square.map(range(5)))
(49, [0, 1, 4, 9, 16])

Functions run in *pools*: warm functions of the gateway whose image is the generic Python
image (:mod:`swarmless.native.images`) and whose handler loads the code each call brings
(:mod:`swarmless.runtime.native`). The functions of an app that keep the app's options
share one pool, named after the app; a function with options of its own gets a pool of its
own (``<app>-<function>``). So a new function is served by containers that are already
warm.

- ``with app.run():`` deploys the pools for the block (named ``<app>-r<4 hex>``, so they
  never touch a deployed app's) and removes them, with their containers, at its end. A
  call outside any run starts one implicitly, ended when the interpreter exits.
- ``app.deploy()`` deploys the pools under their own names with each function's code, so
  they answer by name: ``POST /function/<pool>/<function>`` with ``{"args": [...],
  "kwargs": {...}}`` (the pools are private: the gateway token is needed), and
  :func:`lookup` gives another process a handle to call or spawn them.

Calls are signed with a key derived from the gateway token and the app's name (stored as
the gateway secret ``<pool>.native-key`` that the pools mount); see the runtime module.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import hmac
import pickle
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from swarmless.config import Settings
from swarmless.exceptions import InvalidArgument, NotFound
from swarmless.native._runner import Runner
from swarmless.native._types import Pool
from swarmless.native.function import Function, Options
from swarmless.sdk.gateway import AsyncGatewayClient
from swarmless.spec import FunctionSpec

__all__ = ["App", "Pool", "lookup"]

HANDLER = "swarmless.runtime.native:handle"
_APP_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?$")
_SLUG_LIMIT = 20
#: Image name used to validate options before the real image is known.
_PENDING = "swarmless-native/python:pending"


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "fn"
    if len(slug) > _SLUG_LIMIT:
        digest = hashlib.sha256(name.encode()).hexdigest()[:4]
        slug = f"{slug[: _SLUG_LIMIT - 5].rstrip('-')}-{digest}"
    return slug


class App:
    """A named group of native functions and their defaults (``@app.function()`` options).

    ``settings`` (default: :meth:`Settings.load`, so ``SWARMLESS_GATEWAY_URL``,
    ``SWARMLESS_TOKEN``...) say which gateway runs the functions and which Docker Engine
    builds the images.
    """

    def __init__(self, name: str, *, settings: Settings | None = None, **options: Any) -> None:
        if not isinstance(name, str) or not _APP_NAME.fullmatch(name):
            raise InvalidArgument(
                f"an app name is 1 to 24 characters of a-z, 0-9 and '-' (not at either end), "
                f"got {name!r}"
            )
        self.name = name
        self.settings = settings or Settings.load()
        self.defaults = Options.build(None, **options)
        self.functions: dict[str, Function] = {}
        self.runner = Runner(f"swarmless-native-{name}")
        self._gateway: AsyncGatewayClient | None = None
        self._lock: asyncio.Lock | None = None
        self._pools: dict[str, Pool] = {}
        self._images: dict[tuple[str | None, tuple[str, ...]], str] = {}
        #: The pools' name suffix while a run is on ("-r1a2b"), "" once deployed, None
        #: before either.
        self._suffix: str | None = None
        self._runs = 0
        self._implicit = False
        self._check(self.defaults)

    def __repr__(self) -> str:
        return f"<App {self.name} ({len(self.functions)} functions)>"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            f"the App {self.name!r} cannot be sent to a container: a function may call "
            "other functions of the app (their handles travel), not use the app itself"
        )

    # -- declaring functions ----------------------------------------------------------------

    def function(
        self, _func: Any = None, /, *, name: str | None = None, **options: Any
    ) -> Callable[[Callable[..., Any]], Function]:
        """Decorate a function to run in containers: ``@app.function(timeout=60)``.

        Options (each defaults to the app's): ``image``, ``requirements``, ``timeout``,
        ``memory``, ``cpus``, ``min_containers``, ``max_containers``, ``concurrency``,
        ``retries`` (of spawned calls), ``secrets``, ``env``, ``idle_timeout``,
        ``max_body``, ``max_output``; ``name`` (default: the function's own).
        """
        if _func is not None:
            what = getattr(_func, "__name__", repr(_func))
            raise TypeError(
                f"@app.function needs parentheses: write @{self.name}.function() above "
                f"{what} (it takes options, e.g. @app.function(timeout=60))"
                if callable(_func)
                else f"app.function takes options as keywords only, got {_func!r}"
            )
        opts = Options.build(self.defaults, **options)
        self._check(opts)

        def decorate(func: Callable[..., Any]) -> Function:
            if isinstance(func, Function) or not callable(func):
                raise TypeError(f"@app.function() decorates a function, got {func!r}")
            fname = name or getattr(func, "__name__", "") or "function"
            # A notebook cell run again: the new definition replaces the old.
            handle = Function(self, func, name=fname, options=opts)
            self.functions[fname] = handle
            return handle

        return decorate

    def _check(self, opts: Options) -> None:
        """Options that make no valid pool are refused now, naming the field."""
        self._spec("check", opts, _PENDING)

    def pool_name(self, function: Function) -> str:
        suffix = self._suffix or ""
        if function.options == self.defaults:
            return f"{self.name}{suffix}"
        return f"{self.name}{suffix}-{_slug(function.name)}"

    @property
    def key(self) -> bytes:
        """The key calls are signed with (from the gateway token and the app's name)."""
        token = self.settings.token
        if not token:
            raise InvalidArgument(
                "native functions need the gateway's admin token: set SWARMLESS_TOKEN (or "
                "Settings(token=...)), as for deploying any function"
            )
        return hmac.new(token.encode(), f"swarmless-native:{self.name}".encode(), "sha256").digest()

    def _key_secret(self) -> str:
        return f"{self.name}{self._suffix or ''}.native-key"

    def _spec(self, pool: str, opts: Options, image: str, code: str | None = None) -> FunctionSpec:
        env = dict(opts.env)
        env["_SWARMLESS_NATIVE_KEY"] = self._key_secret()
        spec = FunctionSpec(
            name=pool,
            image=image,
            mode="warm",
            handler=HANDLER,
            env=env,
            secrets=(self._key_secret(), *opts.secrets, *([code] if code else [])),
            timeout=opts.timeout,
            memory=opts.memory,  # type: ignore[arg-type]  # validated into bytes
            cpus=opts.cpus,
            concurrency=opts.concurrency,
            min_containers=opts.min_containers,
            max_containers=opts.max_containers,
            idle_timeout=opts.idle_timeout,
            retries=opts.retries,
            max_body=opts.max_body,  # type: ignore[arg-type]
            max_output=opts.max_output,  # type: ignore[arg-type]
            private=True,
            labels={"native.app": self.name},
        )
        env["_SWARMLESS_NATIVE_LIMIT"] = str(spec.max_output)
        if code:
            env["_SWARMLESS_NATIVE_CODE"] = code
        return spec.replace(env=env)

    # -- on the runner's loop ---------------------------------------------------------------

    @property
    def gateway(self) -> AsyncGatewayClient:
        """The gateway client (used on the runner's loop only)."""
        if self._gateway is None:
            self._gateway = AsyncGatewayClient(self.settings)
        return self._gateway

    async def _image(self, opts: Options) -> str:
        found = self._images.get((opts.image, opts.requirements))
        if found is None:
            found = await asyncio.to_thread(self._build_image, opts)
            self._images[(opts.image, opts.requirements)] = found
        return found

    def _build_image(self, opts: Options) -> str:
        from swarmless.engine import connect
        from swarmless.native.images import generic_image, requirements_image

        client = connect(self.settings.docker_host)
        try:
            image = generic_image(client, opts.image or self.settings.base_image)
            if opts.requirements:
                image = requirements_image(client, image, opts.requirements)
            return image
        finally:
            client.close()

    async def pool(self, function: Function) -> Pool:
        """The pool that runs ``function``, deployed on first use (starting a run when
        none is on and the app was not deployed)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._suffix is None:
                self._start_run(implicit=True)
            name = self.pool_name(function)
            found = self._pools.get(name)
            if found is None:
                if self._suffix == "" and function.raw is None:  # looked up: deployed already
                    return Pool(name, int((await self.gateway.function(name))["spec"]["max_body"]))
                if not self._pools:
                    await self.gateway.put_secret(self._key_secret(), self.key)
                image = await self._image(function.options)
                spec = self._spec(name, function.options, image)
                await self.gateway.deploy(spec)
                found = self._pools[name] = Pool(name, spec.max_body)
            return found

    def _start_run(self, *, implicit: bool) -> None:
        self._suffix = f"-r{secrets.token_hex(2)}"
        self._implicit = implicit
        if implicit:
            atexit.register(self._end_implicit)

    async def _end_run(self) -> None:
        pools, self._pools = list(self._pools), {}
        for name in pools:
            with contextlib.suppress(NotFound):
                await self.gateway.remove(name)
        if pools:
            with contextlib.suppress(NotFound):
                await self.gateway.delete_secret(self._key_secret())
        self._suffix = None

    def _end_implicit(self) -> None:
        if self._implicit and self._suffix:
            with contextlib.suppress(Exception):  # at exit: nothing left to tell
                self.runner.run(self._end_run())
        self.runner.close()

    # -- runs and deployments -----------------------------------------------------------

    @contextlib.contextmanager
    def run(self) -> Iterator[App]:
        """Deploy the app's pools for the block; remove them (and their containers) at its
        end. Pools are deployed on first call; ``min_containers`` start then."""
        if self._suffix == "":
            raise InvalidArgument(f"app {self.name!r} is deployed: call its functions directly")
        outer = self._runs == 0 and (self._suffix is None or self._implicit)
        if outer and self._suffix is None:
            self._start_run(implicit=False)
        self._implicit = False
        self._runs += 1
        try:
            yield self
        finally:
            self._runs -= 1
            if outer:
                self.runner.run(self._end_run())

    def deploy(self) -> dict[str, str]:
        """Deploy every function under its pool's own name, with its code (so it answers
        by name, over HTTP and to :func:`lookup`); returns each function's path."""
        return self.runner.run(self._deploy())

    async def _deploy(self) -> dict[str, str]:
        if self._suffix:
            await self._end_run()
        self._suffix = ""
        self._pools = {}
        await self.gateway.put_secret(self._key_secret(), self.key)
        groups: dict[str, list[Function]] = {}
        for fn in self.functions.values():
            groups.setdefault(self.pool_name(fn), []).append(fn)
        paths: dict[str, str] = {}
        for pool, fns in groups.items():
            codes = {fn.name: fn._code_hash_and_code() for fn in fns}
            secret = f"{pool}.native-code"
            await self.gateway.put_secret(secret, pickle.dumps(codes, protocol=5))
            opts = fns[0].options
            spec = self._spec(pool, opts, await self._image(opts), code=secret)
            digest = hashlib.sha256(pickle.dumps(sorted(codes.items()))).hexdigest()[:16]
            spec = spec.replace(labels={**spec.labels, "native.code": digest})
            await self.gateway.deploy(spec)
            self._pools[pool] = Pool(pool, spec.max_body)
            paths.update({fn.name: f"/function/{pool}/{fn.name}" for fn in fns})
        return paths

    def remove(self) -> None:
        """Remove a deployed app's pools, their containers and secrets."""
        self.runner.run(self._remove())

    async def _remove(self) -> None:
        self._suffix = ""
        for fn in self.functions.values():
            name = self.pool_name(fn)
            with contextlib.suppress(NotFound):
                await self.gateway.remove(name)
            with contextlib.suppress(NotFound):
                await self.gateway.delete_secret(f"{name}.native-code")
        with contextlib.suppress(NotFound):
            await self.gateway.delete_secret(self._key_secret())
        self._pools = {}
        self._suffix = None


def lookup(
    app: str, function: str, *, settings: Settings | None = None, **options: Any
) -> Function:
    """A handle to a function of a deployed app, from any process that has the gateway
    token: ``remote``, ``spawn`` and ``map`` run the deployed code (``local`` cannot).
    Give the function's own options (``timeout=...``) when it was declared with some: they
    name its pool."""
    found = App(app, settings=settings)
    found._suffix = ""
    opts = Options.build(found.defaults, **options)
    handle = Function(found, None, name=function, options=opts)
    found.functions[function] = handle
    return handle
