"""``swarmless run script.py::main [ARGS...]``: a script's entry point with its apps running.

The script is imported as a module named after its file (its ``if __name__ ==
"__main__":`` block does not run; its functions travel by value, being no installed
module's). ``main`` (the default name) is either a native function, called with
``.remote(*ARGS)``, or a plain function, called here with ``*ARGS`` while every
:class:`~swarmless.native.App` of the script runs (``app.run()``: its pools are removed
at the end). ARGS are strings. A value returned is printed; an exception raised by the
script's own code prints its traceback and exits 1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from swarmless.exceptions import InvalidArgument
from swarmless.native.app import App
from swarmless.native.function import Function

__all__ = ["run_script"]


def _load(path: Path) -> ModuleType:
    name = path.stem if path.stem.isidentifier() else "swarmless_script"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_script(target: str, args: list[str]) -> int:
    """Run ``target`` (see the module docstring); the exit status."""
    file, _, entry = target.partition("::")
    entry = entry or "main"
    path = Path(file)
    if not path.is_file():
        raise InvalidArgument(f"no script {file}")
    try:
        module = _load(path.resolve())
    except (SyntaxError, ImportError) as e:
        traceback.print_exc()
        raise InvalidArgument(f"{file} could not be imported: {type(e).__name__}: {e}") from None
    found = getattr(module, entry, None)
    if not callable(found):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise InvalidArgument(
            f"{file} has no function {entry!r}; its functions: {', '.join(names) or 'none'}"
        )
    apps = [v for v in vars(module).values() if isinstance(v, App)]
    try:
        with contextlib.ExitStack() as stack:
            for app in apps:
                stack.enter_context(app.run())
            value: Any = found.remote(*args) if isinstance(found, Function) else found(*args)
    except (InvalidArgument, KeyboardInterrupt):
        raise
    except Exception:
        traceback.print_exc()
        return 1
    if value is not None:
        print(value)
    return 0
