"""Lazy imports: the command line lists, resolves and reuses records without importing torch.

``import torch`` alone costs about two seconds; ``fabench list``, input errors and a reused record
must not pay it. Modules that the registries import to register their entries therefore import
heavy dependencies through these proxies (typed for checkers under ``TYPE_CHECKING``)::

    if TYPE_CHECKING:
        import torch
    else:
        torch = lazy("torch")

* :func:`lazy` is a module proxy: the first attribute access imports the module; attribute reads
  are forwarded to the module (functions are not cached, so patching the module is seen; the
  module and its submodules are).
* :func:`lazy_attr` is one attribute of a module (a class used in ``isinstance`` or called).
* :func:`no_grad` is ``@torch.no_grad()`` for a function defined at import time.
* :class:`TorchModule` is a base for a ``torch.nn.Module`` subclass defined at import time: the
  real subclass (``cls`` + ``nn.Module``) is made on first instantiation.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, ParamSpec, TypeVar


class _LazyModule:
    """A module imported on first attribute access (attributes read through to the module).

    The module object is kept once imported, and so are its *submodules* (``torch.nn``,
    ``torch.linalg``): reading them costs a plain attribute lookup. Other attributes are read from
    the module on every access, so a patched function (a test's ``monkeypatch.setattr(torch,
    "save", ...)``) is seen; setting or deleting an attribute through the proxy patches the module.
    """

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_lazy_name", name)
        object.__setattr__(self, "_lazy_target", None)

    def _lazy_module(self) -> ModuleType:
        module: ModuleType | None = self._lazy_target
        if module is None:
            module = importlib.import_module(self._lazy_name)
            object.__setattr__(self, "_lazy_target", module)
        return module

    def __getattr__(self, attr: str) -> Any:  # only called for names not cached in the instance
        module = self._lazy_target
        if module is None:
            module = self._lazy_module()
        try:
            value = getattr(module, attr)
        except AttributeError:  # a submodule not imported by the package
            value = importlib.import_module(f"{module.__name__}.{attr}")
        if isinstance(value, ModuleType):  # a submodule: kept (patches of its attributes are still seen)
            object.__setattr__(self, attr, value)
        return value

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._lazy_module(), attr, value)
        self.__dict__.pop(attr, None)

    def __delattr__(self, attr: str) -> None:
        delattr(self._lazy_module(), attr)
        self.__dict__.pop(attr, None)

    def __repr__(self) -> str:
        return f"<lazy module {object.__getattribute__(self, '_lazy_name')!r}>"


def lazy(name: str) -> Any:
    """A proxy for module ``name``, imported on first attribute access."""
    return _LazyModule(name)


class _LazyAttr:
    """``getattr(import_module(module), name)`` resolved on first use (call, isinstance, attribute)."""

    def __init__(self, module: str, name: str) -> None:
        self._module, self._name = module, name
        self._target: Any = None

    def resolve(self) -> Any:
        if self._target is None:
            self._target = getattr(importlib.import_module(self._module), self._name)
        return self._target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, self.resolve())

    def __subclasscheck__(self, cls: Any) -> bool:
        return issubclass(cls, self.resolve())

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.resolve(), attr)

    def __repr__(self) -> str:
        return f"<lazy {self._module}.{self._name}>"


def lazy_attr(module: str, name: str) -> Any:
    """A proxy for ``module.name`` (e.g. a class), imported on first use."""
    return _LazyAttr(module, name)


if TYPE_CHECKING:  # pragma: no cover - checkers see the real base
    from torch.nn import Module as TorchModule
else:

    class TorchModule:
        """Base of a ``torch.nn.Module`` subclass defined without importing torch.

        ``class View(TorchModule)`` behaves as ``class View(torch.nn.Module)``: instantiating it makes
        (once) the class ``View`` + ``torch.nn.Module`` and returns an instance of that, so
        ``isinstance(view, torch.nn.Module)`` and ``isinstance(view, View)`` both hold.
        """

        _torch_class: type | None = None

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            import torch

            if issubclass(cls, torch.nn.Module):  # the real class itself
                return torch.nn.Module.__new__(cls)
            real = cls.__dict__.get("_torch_class")
            if real is None:
                real = type(cls.__name__, (cls, torch.nn.Module),
                            {"__module__": cls.__module__, "__qualname__": cls.__qualname__})
                type.__setattr__(cls, "_torch_class", real)
            return torch.nn.Module.__new__(real)


P = ParamSpec("P")
R = TypeVar("R")


def no_grad(fn: Callable[P, R]) -> Callable[P, R]:
    """``@torch.no_grad()`` without importing torch when the function is defined."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper
