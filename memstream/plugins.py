"""Plug-ins: code outside the package that registers policies (or backbones) before a run.

A plug-in is a Python module, named as for `import` (`mypkg.policies`) or given as a file path
(`./every_other.py`), whose import calls `memstream.register_policy(...)`. The CLI (`--plugin`, for
every subcommand: ask, bench, eval), the demo (`python app.py --plugin ...`) and `$MEMSTREAM_PLUGINS`
(comma separated) load them; so do installed packages that declare an entry point in the group
`memstream.plugins`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from .errors import ConfigError

ENV = "MEMSTREAM_PLUGINS"
GROUP = "memstream.plugins"
_loaded: list[str] = []  # what load_plugin imported in this process, in order (modules by name, files by path)


def loaded_plugins() -> list[str]:
    """The plug-ins `load_plugin` imported in this process (module names and resolved .py paths), in order:
    what another process (a model worker) must load to unpickle their policies."""
    return list(_loaded)


def load_plugin(name: str) -> ModuleType:
    """Import one plug-in: a module name or a .py file; ConfigError (one sentence) if it cannot be."""
    try:
        if name.endswith(".py") or os.sep in name:
            path = Path(name).resolve()
            if not path.is_file():
                raise ConfigError(f"Plug-in file {name!r} does not exist.")
            module_name = f"memstream_plugin_{path.stem}"
            if module_name not in sys.modules:  # loaded already: registering twice would only repeat it
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]  # a failed plug-in is not "loaded": a retry runs it again
                    raise
            if str(path) not in _loaded:
                _loaded.append(str(path))
            return sys.modules[module_name]
        module = importlib.import_module(name)
        if name not in _loaded:
            _loaded.append(name)
        return module
    except ConfigError:
        raise
    except ImportError as exc:
        raise ConfigError(f"Plug-in {name!r} could not be imported ({exc}).") from exc
    except Exception as exc:  # the plug-in's own code failed while registering
        raise ConfigError(f"Plug-in {name!r} failed while loading ({type(exc).__name__}: {exc}).") from exc


def load_plugins(names: Iterable[str] = ()) -> list[ModuleType]:
    """Load the installed entry points, then `$MEMSTREAM_PLUGINS`, then `names`, in that order."""
    loaded = [ep.load() for ep in entry_points(group=GROUP)]
    from_env = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    return loaded + [load_plugin(n) for n in [*from_env, *names]]


def plugin_args(argv: list[str]) -> list[str]:
    """The values of every `--plugin X` / `--plugin=X` in a command line (read before the parser is
    built, because the parser's policy flags come from what the plug-ins register)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            out.append(arg.split("=", 1)[1])
    return out
