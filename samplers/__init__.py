"""Batched MCMC kernels for any PyTorch log-density.

A target is a callable ``log_prob(x) -> Tensor[n]`` on ``x: Tensor[n, *event]``; chains are the
batch dimension. Every kernel has ``init(x) -> State`` and ``step(state, generator) -> (State, Info)``;
`sample` runs one with warm-up and returns a `Trace`.
"""

from importlib import metadata as _metadata

from .adaptation import DualAveraging
from .base import Info, Kernel, NonFiniteError, State
from .driver import SamplingInterrupted, sample
from .flowmc import FlowMC
from .hmc import HMC
from .independent import ISIR, IndependentMH
from .latent import Latent
from .mala import MALA
from .tempering import ParallelTempering
from .trace import StreamedTrace, Trace, TraceWriter, open_trace
from .ula import ULA

try:  # one source for the version: the installed distribution's metadata
    __version__ = _metadata.version("flowmc-ebm")
except _metadata.PackageNotFoundError:  # pragma: no cover - a source tree never installed
    __version__ = "0+unknown"

__all__ = ["DualAveraging", "FlowMC", "HMC", "ISIR", "IndependentMH", "Info", "Kernel", "Latent",
           "MALA", "NonFiniteError", "ParallelTempering", "SamplingInterrupted", "State",
           "StreamedTrace", "Trace", "TraceWriter", "ULA", "__version__", "open_trace", "sample"]
