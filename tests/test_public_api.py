"""The package face is pinned: adding or removing a public name is a deliberate change.

As httpx's exported-members test: each package's ``__all__`` is sorted and is exactly the
public names of its namespace (no name imported and forgotten, none listed and missing).
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import types

import pytest

import swarmless

#: The face of ``swarmless``: change it here and in ``swarmless/__init__.py`` together.
PUBLIC = [
    "App",
    "AsyncClient",
    "AsyncGatewayClient",
    "AsyncInvocation",
    "AsyncRun",
    "Client",
    "ContainerError",
    "EngineUnavailable",
    "FunctionFailed",
    "FunctionNotFound",
    "FunctionSpec",
    "GatewayClient",
    "GatewayUnavailable",
    "ImageNotFound",
    "InvalidArgument",
    "Invocation",
    "InvocationNotFound",
    "InvocationRecord",
    "InvocationTimeout",
    "InvokeResult",
    "NoAnswer",
    "NotFound",
    "OOMKilled",
    "PayloadTooLarge",
    "QueueFull",
    "Run",
    "RunTimeout",
    "Settings",
    "SpecError",
    "SwarmlessError",
    "Unauthorized",
    "WaitTimeout",
    "__version__",
    "from_env",
]

ROOT = pathlib.Path(swarmless.__file__).parent
#: Folders of modules that are not (yet) packages with a face of their own: implicit
#: namespace packages, without an ``__init__.py`` or ``__all__``.
NAMESPACE_ONLY: tuple[str, ...] = ()


def _public_names(module: types.ModuleType) -> set[str]:
    """What a package's namespace offers: names without a leading underscore (and
    ``__version__``), minus ``from __future__`` features and submodules (but for those
    ``__all__`` lists: ``swarmless.compat`` offers its ``dockerrun``)."""
    listed = set(getattr(module, "__all__", ()))
    return {
        name
        for name, value in vars(module).items()
        if (not name.startswith("_") or name == "__version__")
        and (
            not isinstance(value, types.ModuleType)
            or (name in listed and value.__name__ == f"{module.__name__}.{name}")
        )
        and type(value).__module__ != "__future__"
    }


def _packages() -> list[str]:
    found = ["swarmless"]
    for init in sorted(ROOT.glob("*/__init__.py")):
        found.append(f"swarmless.{init.parent.name}")
    return found


def test_all_is_pinned() -> None:
    assert swarmless.__all__ == PUBLIC


@pytest.mark.parametrize("name", _packages())
def test_package_all_is_sorted_and_exact(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(getattr(module, "__all__", None) or [])
    # A package may load its names on first use (swarmless._lazy): load them all first.
    for public in exported:
        assert getattr(module, public) is not None, f"{name}.{public}"
    assert exported, f"{name} has no __all__"
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported), f"{name}.__all__ lists a name twice"
    assert set(exported) == _public_names(module), name


def test_every_folder_of_modules_is_a_package() -> None:
    folders = {p.parent.name for p in ROOT.glob("*/*.py")}
    assert {f for f in folders if not (ROOT / f / "__init__.py").exists()} == set()


def test_namespace_folders_are_the_known_ones() -> None:
    # A new folder without an __init__.py is a slip, not a design: say so here.
    folders = {p.parent.name for p in ROOT.glob("*/*.py")}
    missing = {f for f in folders if not (ROOT / f / "__init__.py").exists()}
    assert missing == set(NAMESPACE_ONLY)


def test_exceptions_share_one_root() -> None:
    for name in swarmless.__all__:
        obj = getattr(swarmless, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, swarmless.SwarmlessError), name


def test_exceptions_module_lists_every_error() -> None:
    from swarmless import exceptions

    classes = {
        name
        for name, obj in vars(exceptions).items()
        if isinstance(obj, type) and issubclass(obj, swarmless.SwarmlessError)
    }
    assert classes == set(exceptions.__all__) - {"error_from_status"}
    assert classes <= set(swarmless.__all__)


@pytest.mark.parametrize(
    ("sync", "asyncio_twin"),
    [
        (swarmless.Client, swarmless.AsyncClient),
        (swarmless.GatewayClient, swarmless.AsyncGatewayClient),
        (swarmless.Invocation, swarmless.AsyncInvocation),
        (swarmless.Run, swarmless.AsyncRun),
    ],
    ids=lambda c: c.__name__,
)
def test_async_twins_have_every_method(sync: type, asyncio_twin: type) -> None:
    """Every public method of a sync class is on its asyncio twin, with the same
    parameters, as a coroutine function (context managers: ``async with``)."""
    for name, member in inspect.getmembers(sync):
        if name.startswith("_"):
            continue
        assert hasattr(asyncio_twin, name), f"{asyncio_twin.__name__} lacks {name}"
        twin = inspect.getattr_static(asyncio_twin, name)
        if inspect.isfunction(member) and not isinstance(
            inspect.getattr_static(sync, name), classmethod
        ):
            assert inspect.iscoroutinefunction(twin), f"{asyncio_twin.__name__}.{name}"
            assert _params(member) == _params(twin), f"{asyncio_twin.__name__}.{name}"
    if hasattr(sync, "__enter__"):
        assert hasattr(asyncio_twin, "__aenter__")
        assert hasattr(asyncio_twin, "__aexit__")


def _params(fn: object) -> list[tuple[str, object, object]]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]
