"""Seconds JAX spends compiling, read from its own monitoring events.

JAX records, for every computation it compiles, the time spent tracing it to a jaxpr, lowering it
to MLIR and compiling it in the backend (``/jax/core/compile/*`` in ``jax._src.dispatch``). Traces
nest (a jitted function called inside another is traced inside the outer trace), so summing the
durations would count the inner ones twice: we keep the events' time spans and measure their
union. What it leaves out: Python work between the events (building the sampler, tracing helpers
that are not jitted), which is small next to XLA's compilation on these targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
          "/jax/core/compile/jaxpr_to_mlir_module_duration",
          "/jax/core/compile/backend_compile_duration")


class CompileClock:
    """Collects the compile events' spans while active; ``seconds`` is their union."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    def listener(self, event: str, start: float, end: float, **kwargs) -> None:
        if event in EVENTS:
            self.spans.append((start, end))

    @property
    def seconds(self) -> float:
        total, reach = 0.0, -float("inf")
        for start, end in sorted(self.spans):
            if end <= reach:
                continue
            total += end - max(start, reach)
            reach = end
        return total


@contextmanager
def compile_clock() -> Iterator[CompileClock]:
    """``with compile_clock() as clock: ...``; then ``clock.seconds`` of JAX compilation inside."""
    from jax import monitoring

    clock = CompileClock()
    monitoring.register_event_time_span_listener(clock.listener)
    try:
        yield clock
    finally:
        monitoring.unregister_event_time_span_listener(clock.listener)
