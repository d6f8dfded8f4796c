"""Bind a replacement to one model instance, never to a library module.

transformers' attention layers look `apply_rotary_pos_emb` up in their modeling module's globals
each time they run, so the obvious way to swap it, assigning the module attribute, changes every
model of that architecture in the process: one that preftune trains and one that another part of
the same process serves alike. Instead, `bind_method_globals` gives one module instance its own
copy of a method whose chosen global names resolve elsewhere; the class, the modeling module and
every other instance keep transformers' code.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn


def _copy_function(fn: types.FunctionType, globals_: dict[str, Any], closure: Any) -> types.FunctionType:
    copy = types.FunctionType(fn.__code__, globals_, fn.__name__, fn.__defaults__, closure)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    copy.__dict__.update(fn.__dict__)
    return copy


def with_globals(fn: Callable[..., Any], overrides: Mapping[str, Any]) -> types.FunctionType:
    """A copy of `fn` whose global names in `overrides` resolve to the given values.

    Decorators made with `functools.wraps` (transformers' `deprecate_kwarg` on `forward`, say) are
    kept: the innermost function is copied with the new globals and each wrapper above it is
    copied with its closure pointing at the copy below, so the wrappers still run.
    """
    if not isinstance(fn, types.FunctionType):
        raise TypeError(f"with_globals needs a plain function, got {type(fn).__name__}")
    wrapped = getattr(fn, "__wrapped__", None)
    if wrapped is None:
        return _copy_function(fn, {**fn.__globals__, **overrides}, fn.__closure__)
    inner = with_globals(wrapped, overrides)
    cells, replaced = [], False
    for cell in fn.__closure__ or ():
        try:
            holds_wrapped = cell.cell_contents is wrapped
        except ValueError:  # an empty cell
            holds_wrapped = False
        cells.append(types.CellType(inner) if holds_wrapped else cell)
        replaced = replaced or holds_wrapped
    if not replaced:
        raise TypeError(f"{fn.__qualname__} wraps a function it does not hold in its closure")
    copy = _copy_function(fn, fn.__globals__, tuple(cells))
    copy.__wrapped__ = inner  # type: ignore[attr-defined]
    return copy


def bind_method_globals(module: nn.Module, method: str, overrides: Mapping[str, Any]) -> None:
    """Make `module.<method>` (this instance only) run its class's code with `overrides` as globals."""
    function = getattr(type(module), method)
    setattr(module, method, types.MethodType(with_globals(function, overrides), module))


def global_names(fn: Callable[..., Any]) -> frozenset[str]:
    """The global names the innermost function below `fn`'s decorators reads."""
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    code = getattr(fn, "__code__", None)
    return frozenset(code.co_names) if code is not None else frozenset()
