"""One adapter per sampler in the sampling benchmark (`bench.sampling_peers`).

Every adapter turns a `Problem` (target, starting points, budget of target-gradient evaluations)
into a `Run` (draws, the evaluations it actually spent, wall-clock), so the benchmark scores all
samplers with the same diagnostics. Peers that need packages outside the main venv import them
inside their adapter, and say why they cannot run through `unavailable()`.
"""

import os

# JAX reads its threading flags once, at import: set them before any adapter imports it, so JAX
# uses one core like torch does (the machine is shared, and timings must be comparable).
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
