"""The run-directory side of `JointTrainer.fit`: one writer, checkpoints, exact resume, a graceful
stop.

`fit_loop` drives the iterations of a `JointTrainer` (each one is `JointTrainer._iteration`) and
does everything around them that concerns a run as a whole:

- **one writer**: with a checkpoint directory, `samplers.rundir.RunLock` is held on it for the
  whole of `fit`; a second process gets `samplers.rundir.RunDirectoryLocked` at once, naming the
  directory and the holder's pid, before anything is written. Temporary files of a writer that
  was killed are swept while the lock is held.
- **checkpoints**: every ``checkpoint_every`` iterations and at the end, through
  `flowmc_ebm.checkpoint.write_numbered_checkpoint` (atomic writes, rotation, ``last.pt``).
- **exact resume**: a checkpoint holds, besides the trainer, the state of each callback that has
  ``state_dict()``/``load_state_dict()`` (e.g. `flowmc_ebm.evaluation.ChainSnapshots`, whose
  snapshots R̂ is computed on), the cumulative wall time of ``fit`` over all processes and the
  number of resumptions. `resume` puts the callbacks back, once, after `JointTrainer.load`.
- **graceful stop**: with a checkpoint directory, SIGINT or SIGTERM (in the main thread) lets the
  current iteration finish, commits a checkpoint and raises `TrainingInterrupted`; a second
  signal acts as it would have without (the previous handlers are back after the first).
- **history**: records stay on the device and are moved to ``history_`` in one transfer per
  check (`flush`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from flowmc_ebm.checkpoint import checkpoint_path, write_numbered_checkpoint
from flowmc_ebm.evaluation import quadrature_mode_weights
from flowmc_ebm.training import guard, parallel
from samplers.rundir import RunLock, sweep_leftovers

__all__ = ["CHECKPOINT_KIND", "GracefulStop", "TrainingInterrupted", "callback_states",
           "fit_loop", "flush", "resume", "save_numbered"]

CHECKPOINT_KIND = "joint-trainer"


class TrainingInterrupted(Exception):
    """`fit` stopped on a signal after finishing an iteration and committing a checkpoint.

    Attributes:
        signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        iteration: the iteration the trainer (and the checkpoint) is at.
        checkpoint: the checkpoint written (None without a checkpoint directory).
        exit_code: ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), the shell's convention.
    """

    def __init__(self, signum: int, iteration: int, checkpoint: Path | None):
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint
        self.exit_code = 128 + int(signum)
        saved = f"; checkpoint {checkpoint} holds it" if checkpoint is not None else ""
        super().__init__(f"stopped by {signal.Signals(signum).name} after iteration "
                         f"{iteration}{saved}")


class GracefulStop:
    """While active (a context manager), SIGINT and SIGTERM only set `signum`; the first one puts
    the previous handlers back, so a second signal acts at once. Does nothing outside the main
    thread (Python delivers signals there only)."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.signum = enabled, None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or bool(os.environ.get("CI")),
                mininterval=0.5, leave=False)


# ------------------------------------------------------------------------------- callbacks


def callback_states(trainer) -> list[dict[str, Any] | None]:
    """What a checkpoint keeps of the callbacks: during `fit`, each callback's
    ``state_dict()`` (None for one without), tagged with its class name; outside, the last
    states seen (those of the previous `fit`, or of the checkpoint loaded)."""
    if not trainer._callbacks:
        return trainer._callback_states
    return [{"type": type(cb).__qualname__, "state": cb.state_dict()}
            if callable(getattr(cb, "state_dict", None)) else None
            for cb in trainer._callbacks]


def resume(trainer, callbacks: Sequence[Any]) -> None:
    """After `JointTrainer.load`, once: count the resumption and give each callback with
    ``load_state_dict`` the state its position held when the checkpoint was written.

    Raises:
        ValueError: a callback is not of the class whose state its position holds.
    """
    if not trainer._loaded:
        return
    for i, (cb, saved) in enumerate(zip(callbacks, trainer._callback_states, strict=False)):
        if saved is None or not callable(getattr(cb, "load_state_dict", None)):
            continue
        if saved["type"] != type(cb).__qualname__:
            raise ValueError(f"callback {i} is a {type(cb).__qualname__} but the checkpoint holds "
                             f"the state of a {saved['type']} there; pass the callbacks in the "
                             "order of the run that wrote it")
        cb.load_state_dict(saved["state"])
    trainer.resumptions_ += 1
    trainer._loaded = False


# --------------------------------------------------------------------------------- history


def flush(trainer) -> None:
    """Move pending records to ``history_``: one host transfer per check."""
    if not trainer._pending:
        return
    n = len(trainer._pending)
    first = trainer.iteration_ - n + 1
    h = trainer.history_
    h.setdefault("iteration", []).extend(range(first, trainer.iteration_ + 1))
    h.setdefault("elapsed", []).extend([trainer._elapsed] * n)
    for key in trainer._pending[0]:
        if key in ("eval", "guard"):
            continue
        h.setdefault(key, []).extend(torch.stack([r[key] for r in trainer._pending]).tolist())
    for i, record in enumerate(trainer._pending):
        if "eval" in record:
            h.setdefault("eval_iteration", []).append(first + i)
            h.setdefault("ebm_mode_weights", []).append(record["eval"].tolist())
    trainer._pending = []


def _postfix(trainer) -> dict[str, str]:
    h = trainer.history_
    out = {"gap": f"{h['energy_gap'][-1]:+.3f}"}
    if h.get("ebm_mode_weights"):
        out["w"] = "/".join(f"{w:.2f}" for w in h["ebm_mode_weights"][-1])
    return out


# ----------------------------------------------------------------------------- checkpoints


def save_numbered(trainer, directory: str | Path) -> Path:
    """``iter-NNNNNN.pt`` in ``directory``, ``last.pt`` pointed at it, old ones pruned (under a
    process group: a collective, rank 0 writing every rank's chains, see `parallel`)."""
    guard.refuse_non_finite(trainer, checkpoint_path(directory, trainer.iteration_))
    ctx = getattr(trainer, "_parallel", None)
    if ctx is not None:
        path = ctx.save(trainer, directory, trainer._resumed_at)
        trainer._resumed_at = None
        return path
    path = write_numbered_checkpoint(trainer.state_dict(), directory, trainer.iteration_,
                                     CHECKPOINT_KIND, trainer.config.keep_checkpoints,
                                     newer_than=trainer._resumed_at)
    trainer._resumed_at = None
    return path


# ------------------------------------------------------------------------------------ loop


def fit_loop(trainer, data: torch.Tensor, total: int, target: Any, callbacks: Sequence[Any],
             checkpoint_dir: str | Path | None, checkpoint_every: int, progress: bool) -> None:
    """`JointTrainer.fit` once its arguments are checked (see there)."""
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    ctx = parallel.attach(trainer)  # None without torch.distributed
    writer = ctx is None or ctx.rank == 0  # under torchrun rank 0 alone writes and locks
    lock = RunLock(directory).acquire() if directory is not None and writer else None
    try:
        if directory is not None and writer:
            sweep_leftovers(directory)
        resume(trainer, callbacks)
        trainer._callbacks = tuple(callbacks)
        if ctx is not None:
            ctx.enter(trainer)
        with GracefulStop(enabled=directory is not None) as stop:
            _loop(trainer, data, total, target, callbacks, directory, checkpoint_every,
                  progress and writer, stop)
    finally:
        if ctx is not None:
            ctx.exit(trainer)
        trainer._callback_states = callback_states(trainer)
        trainer._callbacks = ()
        if lock is not None:
            lock.release()


def _loop(trainer, data, total, target, callbacks, directory, checkpoint_every, progress,
          stop: GracefulStop) -> None:
    t = trainer
    ctx = getattr(t, "_parallel", None)
    t._n_data = data.shape[0]
    if t.pool_ is None:
        t.pool_ = t._draw_base(t.config.pool_size, t.generator)
    evaluate = (target is not None and t.dim == 2 and t.config.eval_every > 0)
    bar = _progress_bar(total, progress, f"{t._sampler_name()}-EBM")
    start = time.perf_counter() - t._elapsed
    goal = t.iteration_ + total
    saved_at, halted = None, None
    # Numbered checkpoints after this point belong to a future this run abandoned (e.g. a
    # corrupt newest file skipped on resume): the first write here removes them.
    t._resumed_at = t.iteration_
    flush(t)
    t._good = guard.snapshot(t)
    try:
        while t.iteration_ < goal:
            try:
                record = t._iteration(data, target)
                if ctx is not None:
                    record = ctx.reduce_record(record)
            except ValueError as err:
                if ctx is not None:  # the other ranks are inside the all-reduce: stop the job
                    raise RuntimeError(
                        f"rank {ctx.rank}: iteration {t.iteration_ + 1} failed ({err}); a "
                        f"distributed run cannot restart one rank from its last good state, "
                        f"so the job stops: resume it from the last checkpoint (with smaller "
                        f"learning rates if it diverged)") from err
                # A kernel refusing NaN/inf chains or log-densities (samplers.NonFiniteError)
                # is a diverged EBM the guard may not have seen yet; so is any ValueError
                # once the guard's records are already out of range. Others are not ours.
                bad = t._first_bad()
                if bad is None and not guard.is_divergence(err):
                    raise
                text = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
                guard.restart(t, *(bad or (
                    t.iteration_ + 1,
                    f"the model's log-density is NaN or infinite at the chains ({text})")))
                bar.n = t.iteration_ - (goal - total)
                continue
            t.iteration_ += 1
            if evaluate and t.iteration_ % t.config.eval_every == 0:
                record["eval"] = quadrature_mode_weights(t.log_prob, target, device=t.device)
            t._pending.append(record)
            bar.update()
            log = t.iteration_ % t.config.log_every == 0
            save = directory is not None and t.iteration_ % checkpoint_every == 0
            halt = stop.signum is not None
            if ctx is not None:  # agreed at log points and checkpoints only (a host sync)
                halt = (log or save or t.iteration_ == goal) and ctx.any(halt, t.device)
            if not (log or save or halt or t.iteration_ == goal):
                continue
            t._elapsed = time.perf_counter() - start
            passed = t._check()
            if not passed and not halt:  # restored to the last good state: go on from there
                bar.n = t.iteration_ - (goal - total)
                continue
            stopped = False
            if log and passed:
                bar.set_postfix(_postfix(t), refresh=False)
                stopped = any(bool(callback(t)) for callback in callbacks)
            if ctx is not None and log:
                stopped = ctx.any(stopped, t.device)
            if save or (halt and directory is not None):
                save_numbered(t, directory)
                saved_at = t.iteration_
            if halt:
                halted = stop.signum
                break
            if stopped:
                break
    finally:
        bar.close()
        t._elapsed = time.perf_counter() - start
        flush(t)
        t._good = None
    path = None
    if directory is not None and saved_at != t.iteration_:
        path = save_numbered(t, directory)
    elif directory is not None:
        path = checkpoint_path(directory, t.iteration_)
    if halted is not None:
        raise TrainingInterrupted(halted, t.iteration_, path)
