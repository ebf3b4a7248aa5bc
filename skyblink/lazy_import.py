"""
Module-level imports of heavy or optional packages that cost nothing until first used.

The driver side (CLI, configuration, cluster driver, storage, sim) runs without torch, onnxruntime,
TensorRT or CUDA, and ``skyblink --help`` should not pay for astropy or Ray. Instead of an
``import`` inside every function that needs such a package, a module binds the name once at the
top through `lazy_module`; the package is imported on the first attribute access (``torch.zeros``,
``fits.open``), not when the module is imported, so importing the module stays cheap and works
where the package is missing.

Write it so that the type checker still sees the real module::

    from typing import TYPE_CHECKING

    from skyblink.lazy_import import lazy_module

    if TYPE_CHECKING:
        import torch
        from astropy.io import fits
    else:
        torch = lazy_module("torch")
        fits = lazy_module("astropy.io.fits")

A package that is not installed raises `MissingDependencyError` (a `ModuleNotFoundError`, so an
``except ImportError`` that falls back keeps working) at first use, naming the package and the
extra that installs it, e.g. ``pip install 'skyblink[ml]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any

__all__ = ["EXTRAS", "MissingDependencyError", "lazy_module"]

#: Which of skyblink's extras (``[project.optional-dependencies]`` in pyproject.toml) installs
#: each optional top-level import name. Packages not named here belong to the base install.
EXTRAS: dict[str, str] = {
    "torch": "ml",
    "onnx": "ml",
    "onnxscript": "ml",
    "onnxruntime": "cpu",
    "cuda": "gpu",
    "tensorrt": "tensorrt",
    "tensorrt_rtx": "tensorrt",
    "h5py": "dev",
}


class MissingDependencyError(ModuleNotFoundError):
    """A package imported through `lazy_module` is not installed; the message says how to install it."""


def _install_hint(package: str) -> str:
    extra = EXTRAS.get(package)
    if extra is None:
        return "it is a dependency of skyblink's base install: reinstall with `pip install skyblink`"
    return f"install it with `pip install 'skyblink[{extra}]'`"


#: Attributes that introspection (inspect.unwrap, test collectors) probes on any object: answered
#: "absent" without importing, so probing a stand-in neither costs an import nor fails without it.
_PROBES = frozenset({"__wrapped__", "__signature__", "__test__"})


class _LazyModule(ModuleType):
    """A stand-in for a module that imports the real one on the first attribute access."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _lazy_load(self) -> ModuleType:
        target: ModuleType | None = self.__dict__["_lazy_target"]
        if target is None:
            name = self.__name__
            try:
                target = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                # Only the package itself (or a parent of it) missing is ours to explain; a missing
                # dependency *of* the package is the package's own error and passes unchanged.
                missing = exc.name or ""
                if missing and (name == missing or name.startswith(missing + ".")):
                    top = missing.partition(".")[0]
                    raise MissingDependencyError(
                        f"{name} is needed here but the package {top!r} is not installed: "
                        f"{_install_hint(top)}", name=missing) from exc
                raise
            self.__dict__["_lazy_target"] = target
        return target

    def __getattr__(self, attr: str) -> Any:
        if attr in _PROBES:
            raise AttributeError(attr)
        return getattr(self._lazy_load(), attr)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Pickled by name (Ray ships closures that use module globals): a stand-in again on the far side.
        return lazy_module, (self.__name__,)

    def __dir__(self) -> list[str]:
        return dir(self._lazy_load())

    def __repr__(self) -> str:
        state = "imported" if self.__dict__["_lazy_target"] is not None else "not yet imported"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_module(name: str, package: str | None = None) -> ModuleType:
    """
    Return a stand-in for the module ``name`` that imports it on first attribute access.

    Parameters
    ----------
    name : str
        The module name, e.g. ``"torch"`` or ``"astropy.io.fits"`` (import submodules by their own
        name: attributes of the stand-in are looked up on exactly this module), or a relative
        name such as ``".networks"`` together with ``package``.
    package : str, optional
        The package a relative ``name`` is resolved against (pass ``__package__``), as in
        `importlib.import_module`; resolving it imports nothing.

    Returns
    -------
    types.ModuleType
        Nothing is imported and ``sys.modules`` is not touched until an attribute is read; from then
        on every attribute read is forwarded to the imported module.

    Raises
    ------
    MissingDependencyError
        On the first attribute access, when the package is not installed: the message names the
        package and the skyblink extra that installs it (`EXTRAS`). Any other error raised while
        importing the module propagates unchanged, at the same point.
    ValueError
        ``name`` is empty, or relative without ``package``.
    """
    if name.startswith("."):
        if not package:
            raise ValueError(f"lazy_module needs the package to resolve the relative name {name!r} against")
        name = importlib.util.resolve_name(name, package)
    if not name:
        raise ValueError("lazy_module needs a module name")
    return _LazyModule(name)
