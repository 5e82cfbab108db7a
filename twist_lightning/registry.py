"""Strategy names for ``Trainer(strategy="twist")`` without importing Lightning when the package is imported.

``import twist_lightning`` must stay light (``import twist_lightning.model`` does not import Lightning), yet
Lightning reads its strategy registry only for its own classes. So the names are registered as small factories the
moment ``lightning.pytorch.strategies`` is imported: at once if it already is, else by a one-shot import hook
that runs after that module has executed. The factories import the strategy classes only when a Trainer asks.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any, Callable

REGISTRY_MODULE = "lightning.pytorch.strategies"

# name -> (module, class, start_method)
NAMES: dict[str, tuple[str, str, str]] = {
    "twist": ("twist_lightning.strategy", "TwISTStrategy", "popen"),
    "twist_spawn": ("twist_lightning.strategy", "TwISTStrategy", "spawn"),
    "twist_fork": ("twist_lightning.strategy", "TwISTStrategy", "fork"),
    "ddp_counting": ("twist_lightning.comm", "CountingDDPStrategy", "popen"),
    "ddp_counting_spawn": ("twist_lightning.comm", "CountingDDPStrategy", "spawn"),
}


def _factory(module: str, cls: str) -> Callable[..., Any]:
    def build(**kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), cls)(**kwargs)

    build.__name__ = build.__qualname__ = cls
    return build


def register(registry: Any) -> None:
    """Add every name to Lightning's ``StrategyRegistry`` (names already there are left alone)."""
    for name, (module, cls, start_method) in NAMES.items():
        if name not in registry:
            registry.register(name, _factory(module, cls), description=f"{cls} with start_method {start_method!r}",
                              start_method=start_method)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds ``lightning.pytorch.strategies`` through the other finders and registers once it has executed."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)  # one shot, and the lookup below must not find this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            register(module.StrategyRegistry)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register now if Lightning's strategies are loaded, else when they are."""
    loaded = sys.modules.get(REGISTRY_MODULE)
    if loaded is not None and hasattr(loaded, "StrategyRegistry"):
        register(loaded.StrategyRegistry)
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
