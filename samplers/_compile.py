"""The compiled path of a kernel's step: ``samplers.sample(..., compile=True)``.

A kernel with a compiled path (MALA, HMC, ULA; FlowMC's local steps through its MALA) splits its
step in two: the random draws, taken eagerly from the run's generator in the eager step's order,
and a pure tensor function of the state and those draws (proposal, log-density and gradient,
Metropolis–Hastings decision), which is what `torch.compile` sees, as one graph
(``fullgraph=True``; the gradient by `torch.func.grad`, which Dynamo keeps in the graph, where
`torch.autograd.grad` would break it). So a compiled chain and an eager chain with the same
generator make the same draws and agree to float rounding.

Where the compiler is absent or cannot compile the user's log-density as one graph (``.item()``,
numpy, data-dependent Python control flow, ...), the same function runs eagerly: a warning says so
once per kernel type and reason, and the run goes on.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

_WARNED: set[tuple[str, str]] = set()
# torch.compile's backend; the fast tests use "aot_eager" (the same one-graph capture, gradient
# included, without Inductor's code generation, whose first use costs a minute on a cold cache).
BACKEND = "inductor"


def warn_once(key: tuple[str, str], message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


class CompiledCore:
    """``fn(*args, functional=True)`` (a pure tensor function, its gradient by `torch.func.grad`)
    through ``torch.compile(fullgraph=True, dynamic=False)``, falling back to ``fn(*args)`` (eager,
    `torch.autograd.grad`), with one warning, when compilation fails. (Should Dynamo give up on
    its own, past its recompile limit, it runs the functional form eagerly: right, but slower.)

    ``failed`` holds the reason after a fallback (then every later call is eager)."""

    def __init__(self, fn: Callable[..., Any], owner: str):
        self.fn, self.owner = fn, owner
        self.failed: str | None = None
        self._compiled: Callable[..., Any] | None = None

    def __call__(self, *args: Tensor) -> Any:
        if self.failed is None:
            try:
                if self._compiled is None:
                    self._compiled = torch.compile(functools.partial(self.fn, functional=True),
                                                   fullgraph=True, dynamic=False,
                                                   backend=BACKEND)
                return self._compiled(*args)
            except Exception as err:  # compiler absent or the log-density not compilable
                reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
                self.failed = reason
                warn_once((self.owner, type(err).__name__),
                          f"{self.owner}: compile=True could not compile the step ({reason}); "
                          "running it eagerly (same chain, eager speed)")
        return self.fn(*args)


def compiled_kernels(kernel: Any) -> list[Any]:
    """The kernels inside ``kernel`` (itself included) that have a compiled step path: those with
    a class attribute ``_compiled_path = True``, found through attributes, lists and tuples."""
    from .base import Kernel

    found: list[Any] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Kernel):
            if getattr(type(obj), "_compiled_path", False):
                found.append(obj)
            for value in vars(obj).values():
                visit(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value)

    visit(kernel)
    return found


@contextlib.contextmanager
def compiling(kernel: Any, on: bool) -> Iterator[list[Any]]:
    """Within the block, ``kernel``'s compilable parts take their compiled path (``on``) or the
    eager one; their previous setting is restored after."""
    parts = compiled_kernels(kernel)
    before = [vars(k).get("_compile") for k in parts]
    for k in parts:
        k._compile = on
    try:
        yield parts
    finally:
        for k, b in zip(parts, before, strict=True):
            if b is None:
                vars(k).pop("_compile", None)
            else:
                k._compile = b


def core(kernel: Any, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself (eager) or its `CompiledCore`, made once per kernel and name."""
    if not getattr(kernel, "_compile", False):
        return fn
    cores = vars(kernel).setdefault("_compiled_cores", {})
    if name not in cores:
        cores[name] = CompiledCore(fn, type(kernel).__name__)
    return cores[name]
