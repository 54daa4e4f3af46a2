"""Hooks that always come off: every target is resolved before any hook is registered, and all are removed in
``finally``, so an exception inside the block (or inside a hook) leaves the model as it was."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from torch import nn

HookKind = Literal["forward", "forward_pre"]


@contextmanager
def hooks(specs: Sequence[tuple[nn.Module, HookKind, Callable[..., Any]]]) -> Iterator[None]:
    for module, kind, _ in specs:
        if not isinstance(module, nn.Module):
            raise TypeError(f"hook target is {type(module).__name__}, not a module")
        if kind not in ("forward", "forward_pre"):
            raise ValueError(f"unknown hook kind {kind!r}")
    handles = []
    try:
        for module, kind, fn in specs:
            if kind == "forward":
                handles.append(module.register_forward_hook(fn))
            else:
                handles.append(module.register_forward_pre_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once the activations it needs are captured."""
