"""mutualops' interpreter-start hook, imported by the ``mutualops-startup.pth`` file that installing
mutualops puts into site-packages.

With ``MUTUALOPS_ULTRALYTICS=1`` in the environment, every Python process that imports ultralytics (the
``yolo`` command, the DDP workers Ultralytics starts from a generated script, spawned dataloader workers)
routes Ultralytics' detection assigner and NMS through mutualops as soon as the ``ultralytics`` package has
loaded, exactly as ``mutualops.integrations.ultralytics.install()`` would. Unset or 0, nothing happens.

It imports nothing at interpreter start beyond the standard library: torch and mutualops load only when
ultralytics does, and after it, so that Ultralytics' own start-up (it sets OMP_NUM_THREADS before torch
loads) is unchanged.
"""

import importlib.abc
import os
import sys

VARIABLE = "MUTUALOPS_ULTRALYTICS"
_ON = ("1", "true", "yes", "on")
_OFF = ("", "0", "false", "no", "off")


def wanted():
    """Whether the environment asks for the drop-in; a value that is neither on nor off is reported on stderr
    (one line) and leaves it off."""
    raw = os.environ.get(VARIABLE, "")
    value = raw.strip().lower()
    if value in _ON:
        return True
    if value not in _OFF:
        sys.stderr.write(f"mutualops: {VARIABLE} must be 1 or 0, got {raw!r}; the Ultralytics drop-in stays off\n")
    return False


def _install():
    try:
        from mutualops.integrations import ultralytics as mo_ultralytics
    except ImportError as e:
        raise ImportError(f"{VARIABLE}=1 routes Ultralytics through mutualops, but mutualops failed to load: {e} "
                          f"(unset {VARIABLE} to train with Ultralytics' own assigner and NMS)") from e
    mo_ultralytics.install(announce=f"{VARIABLE}=1")


class _InstallAfterLoading(importlib.abc.Loader):
    """The ultralytics package's own loader, followed by install() once the package has executed; the module
    gets its own loader back, so that nothing downstream sees this one."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self._loader
        _install()


class _WatchForUltralytics(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``ultralytics`` is first imported, it looks the package up with the other
    finders and hands back its spec with the loader wrapped. One shot: it leaves sys.meta_path then."""

    def find_spec(self, name, path=None, target=None):
        if name != "ultralytics":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:  # as the import system would, without this finder
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None and spec.loader is not None:
                spec.loader = _InstallAfterLoading(spec.loader)
                return spec
        return None


def activate():
    """Called at interpreter start: watch for ultralytics when the environment asks for the drop-in."""
    if not wanted():
        return
    if "ultralytics" in sys.modules:  # imported already (a .pth of its own, or a late call): install now
        _install()
    elif not any(isinstance(f, _WatchForUltralytics) for f in sys.meta_path):
        sys.meta_path.insert(0, _WatchForUltralytics())


activate()
