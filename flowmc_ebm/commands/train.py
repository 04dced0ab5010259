"""``flowmc-ebm train``: train an EBM on a known target and write checkpoints, history and figures.

Output directory layout::

    OUT/config.json          the resolved RunConfig
    OUT/checkpoints/iter-NNNNNN.pt  the trainer every checkpoint_every iterations (atomic writes;
                             the trainer.keep_checkpoints newest are kept)
    OUT/checkpoints/last.pt  the newest of them
    OUT/history.json         per-iteration losses, acceptance, mode weights (NaN as null)
    OUT/summary.json         the last-quarter numbers (weight, error, acceptance, R̂, wall time)
    OUT/landscape.png        2-D target: the target's and the EBM's densities, with the chains
    OUT/weights.png          2-D target: the EBM's weight of one mode against the iteration
    OUT/model.png            --data, or a target above 2-D: the model's samples (the chains)
                             beside the data; a pair plot above 2-D (none with --no-figures)

A directory that already holds a run is never written over: ``--resume`` continues it from the
newest checkpoint that reads (a truncated or corrupt newer one is named on stderr and skipped).
A run killed before its first checkpoint resumes from the start. The same command line with
``--resume`` added is accepted (what a job scheduler re-runs); a setting that differs from the
saved config is refused, naming it, except the length (``--epochs``, ``--iterations``).

One process writes OUT at a time (`samplers.rundir.RunLock` on OUT, taken before anything is
checked or written); every file is written atomically (`samplers.rundir.atomic_write`).
SIGINT/SIGTERM stop the run after the current iteration with a checkpoint and exit 130/143.

Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1) the command initializes the process
group itself (gloo on CPU, NCCL with ``--device cuda``, each rank on ``cuda:LOCAL_RANK``), runs
the data-parallel fit of `flowmc_ebm.training.parallel` and destroys the group when it ends,
by an error or not. Rank 0 alone creates, locks and writes OUT and prints; every rank reads the
config and, with ``--resume``, the checkpoint (so OUT must be on a filesystem every node sees).
An error a rank meets before training (OUT taken, a bad checkpoint) stops every rank with its
message (`flowmc_ebm.training.parallel.agreement`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flowmc_ebm.checkpoint import LATEST, latest_checkpoint, list_checkpoints, point_latest
from flowmc_ebm.commands import make_output_directory
from flowmc_ebm.config import TARGETS, RunConfig, load_config, parse_overrides, sampler_names
from flowmc_ebm.data import DataRun, read_data  # noqa: F401 - DataRun: the command's names
from flowmc_ebm.evaluation import (
    ChainSnapshots,
    focus_mode,
    last_quarter_summary,
    write_figures,
    write_model_figure,
)
from flowmc_ebm.trainer import JointTrainer
from flowmc_ebm.training import parallel
from flowmc_ebm.training import run as run_directory
from flowmc_ebm.training.run import TrainingInterrupted
from samplers.rundir import RunLock, atomic_write, sweep_leftovers

HELP = ("train an EBM (flowMC-EBM, ULA-PCD, MALA-PCD or NT-EBM) on a known target or on your "
        "data (--data FILE)")

CHECKPOINT = Path("checkpoints") / LATEST


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="a TOML RunConfig; flags below override it")
    parser.add_argument("--target", choices=TARGETS, help="target (config key: target)")
    # The method registry as it is when the parser is built: a method registered before
    # (flowmc_ebm.training.register) is a choice too.
    parser.add_argument("--sampler", choices=sampler_names(),
                        help="sampler (config key: sampler)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="passes over the data (config key: epochs)")
    length.add_argument("--iterations", type=int, help="EBM steps (config key: iterations)")
    parser.add_argument("--seed", type=int, help="trainer and data seed (trainer.seed, data_seed)")
    parser.add_argument("--alpha", type=float, help="energy L2 weight α (trainer.energy_l2)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config field, dotted, TOML value: --set trainer.lr_flow=0.001")
    parser.add_argument("--data", type=Path, help="train on this file's rows (.npy, .npz, .csv) "
                        "instead of a target's draws; standardized, the standardization kept "
                        "in the checkpoints (sample --model undoes it)")
    parser.add_argument("--columns", help="with --data: columns to keep, by header name or "
                        "0-based index, comma-separated (default all)")
    parser.add_argument("--data-key", help="with --data FILE.npz: the array to read")
    parser.add_argument("--device", default="cpu", help="where the networks and chains live")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run saved in --out (its config; the length may change)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    parser.add_argument("--no-figures", dest="figures", action="store_false",
                        help="write no figures (landscape.png, weights.png, model.png)")


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """The RunConfig the flags describe: ``base`` (default: the defaults), then ``--config``,
    then the flags."""
    config = load_config(args.config) if args.config is not None else (base or RunConfig())
    overrides: dict[str, Any] = {}
    for flag, key in [("target", "target"), ("sampler", "sampler"), ("epochs", "epochs"),
                      ("alpha", "trainer.energy_l2")]:
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.iterations is not None:
        overrides["iterations"] = args.iterations
    if args.epochs is not None:
        overrides["iterations"] = 0
    if args.seed is not None:
        overrides["trainer.seed"] = args.seed
        overrides["data_seed"] = args.seed
    if getattr(args, "n_rows", None) is not None:
        overrides["n_data"] = args.n_rows
    overrides.update(parse_overrides(args.set))
    return config.replace(overrides) if overrides else config


def data_defaults(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``--data``: `flowmc_ebm.FlowMCEBM`'s defaults (the mixture tilt, flowMC's global moves
    from it: real data's class weights within 0.03, `docs/results_real_data.md`), unless
    ``--config`` or ``--set trainer.tilt`` chose otherwise, or the sampler is NT-EBM."""
    chosen = {key.rsplit(".", 1)[-1] for key in parse_overrides(args.set)}  # flat or grouped
    if args.config is not None or config.sampler == "nt" or "tilt" in chosen:
        return config
    proposal = ({"trainer.global_proposal": "tilt"} if config.sampler == "flowmc"
                and "global_proposal" not in chosen else {})
    return config.replace({"trainer.tilt": "gmm", **proposal})


def make_data(config: RunConfig) -> tuple[Any, torch.Tensor]:
    """The target and ``n_data`` exact draws from it (seeded by ``data_seed``)."""
    target = config.make_target()
    generator = torch.Generator().manual_seed(config.data_seed)
    return target, target.sample(config.n_data, generator=generator)


def _json_ready(value: Any) -> Any:
    """NaN and inf as null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_json(path: Path, value: Any) -> None:
    """Atomically (a full disk leaves the previous file, and the error names it)."""
    atomic_write(path, (json.dumps(_json_ready(value), indent=1) + "\n").encode("utf-8"))


def train_run(config: RunConfig, out: Path | None = None, *, resume: bool = False,
              progress: bool = True, snapshot_chains: int = 128,
              callbacks: tuple[Callable, ...] = (), data: Any = None,
              device: Any = None, figures: bool = True) -> tuple[JointTrainer, dict[str, Any]]:
    """One training run from a config, end to end, with its summary (and files under ``out``).

    Args:
        config: the run.
        out: output directory (see the module docstring), or None to write nothing.
        resume: continue the run saved in ``out`` up to ``config.n_iterations``.
        progress: progress bar.
        snapshot_chains: persistent chains followed for R̂.
        callbacks: more `JointTrainer` callbacks.
        data: a `flowmc_ebm.data.DataRun` to train on instead of the target's draws
            (no known weights then: the weight fields of the summary are NaN).
        device: where the networks live (default CPU).
        figures: write the run's figures under ``out`` (a 2-D target: ``landscape.png`` and
            ``weights.png``; data or a target in higher dimension: ``model.png``, the model's
            samples beside the data, a pair plot above 2-D).

    Returns:
        ``(trainer, summary)``; the summary holds `last_quarter_summary`'s numbers, the true
        weight, the wall time and the config.

    Raises:
        ValueError: ``out`` already holds a run and ``resume`` is False, or ``resume`` is True
            and there is no run to continue, or no checkpoint of it reads (nothing is written in
            any of these cases).
        OSError: ``out`` cannot be created or written.
        TrainingDivergedError: training diverged beyond ``trainer.max_restarts`` restarts; the
            checkpoints written before are good.
    """
    if out is None:
        return _train(config, None, resume, progress, snapshot_chains, callbacks, data, device,
                      figures)
    with contextlib.ExitStack() as lock:
        with parallel.agreement():  # under torchrun: every rank goes on, or none
            if resume and not out.is_dir():
                raise ValueError(f"nothing to resume: {out} does not exist")
            if parallel.is_writer():  # rank 0 alone makes, locks and writes OUT
                make_output_directory(out)
                # The lock first: the checks below and every write after are then one process's.
                lock.enter_context(RunLock(out))
                sweep_leftovers(out)
        return _train(config, out, resume, progress, snapshot_chains, callbacks, data, device,
                      figures)


def _train(config: RunConfig, out: Path | None, resume: bool, progress: bool,
           snapshot_chains: int, callbacks: tuple[Callable, ...], data_run: Any = None,
           device: Any = None, figures: bool = True) -> tuple[JointTrainer, dict[str, Any]]:
    directory = out / CHECKPOINT.parent if out is not None else None
    with parallel.agreement():
        trainer, target, data, callbacks = _prepare(config, out, directory, resume, callbacks,
                                                    data_run, device)
    writer = parallel.is_writer()
    written = out if writer else None  # under torchrun rank 0 writes OUT; every rank trains
    remaining = config.n_iterations - trainer.iteration_
    snapshots = ChainSnapshots(snapshot_chains)
    all_callbacks = (snapshots, *callbacks)
    if written is not None:
        write_json(written / "config.json", config.to_dict())
    start = time.perf_counter()
    if remaining > 0:
        trainer.fit(data, n_iterations=remaining, target=target, callbacks=all_callbacks,
                    checkpoint_dir=directory,
                    checkpoint_every=config.checkpoint_every, progress=progress)
    else:  # nothing left to train (e.g. killed while writing the summary): the report only
        run_directory.resume(trainer, all_callbacks)
    mode = focus_mode(target) if target is not None else 0
    truth = float(target.weights[mode]) if target is not None else math.nan
    # wall_time: seconds of training summed over the processes of a resumed run.
    summary = {"sampler": config.sampler,
               "target": config.target if data_run is None else None,
               "data": None if data_run is None else data_run.standardization.source,
               "mode": mode, "truth": truth,
               **last_quarter_summary(trainer.history_, mode, truth, snapshots),
               "wall_time": trainer.elapsed_,
               "wall_time_process": time.perf_counter() - start,
               "resumptions": trainer.resumptions_, "config": config.to_dict()}
    pool = parallel.gather_pool(trainer) if out is not None else None  # a collective
    if written is not None:
        write_json(out / "history.json", trainer.history_)
        write_json(out / "summary.json", summary)
        if figures and target is not None and target.dim == 2:
            write_figures(trainer, target, data, out, config.sampler, pool=pool)
        elif figures:  # data from a file, or a target in higher dimension: a pair plot
            write_model_figure(trainer, data, out, data_run, pool=pool)
    return trainer, summary


def _prepare(config: RunConfig, out: Path | None, directory: Path | None, resume: bool,
             callbacks: tuple[Callable, ...], data_run: Any, device: Any
             ) -> tuple[JointTrainer, Any, torch.Tensor, tuple[Callable, ...]]:
    """The trainer (new or resumed), the target, the training points and the callbacks."""
    writer = parallel.is_writer()
    has_checkpoint = directory is not None and bool(
        list_checkpoints(directory) or (directory / LATEST).exists())
    if out is not None and not resume and has_checkpoint:
        raise ValueError(f"{out} already holds a run ({directory}); pass --resume to continue "
                         "it or choose another --out")
    if resume and not has_checkpoint:
        if out is None or not (out / "config.json").is_file():
            raise ValueError(f"nothing to resume: no checkpoint in {directory}")
        if writer:
            print(f"warning: no checkpoint in {directory} yet: the run starts again from "
                  f"iteration 0", file=sys.stderr)
        resume = False
    checkpoint = None
    if resume:
        with warnings.catch_warnings(record=True) as skipped:
            warnings.simplefilter("always")
            checkpoint = latest_checkpoint(directory)
        for warning in skipped if writer else ():
            print(f"warning: {warning.message}", file=sys.stderr)
    if data_run is None:
        target, data = make_data(config)
    else:  # the user's rows, standardized; the standardization rides in the checkpoints
        target, data = None, data_run.points
        callbacks = (*callbacks, data_run.standardization)
    if checkpoint is not None:
        # parallel.load keeps a torchrun checkpoint's per-rank state, so that a resume with
        # another process count is refused by name instead of continuing inexactly.
        trainer = parallel.load(checkpoint, map_location=device)
        if writer:
            print(f"resuming from {checkpoint} (iteration {trainer.iteration_})", flush=True)
        # A run killed before it pointed last.pt at its newest checkpoint:
        if writer and checkpoint.name != LATEST:
            point_latest(checkpoint)
    else:
        trainer_config = config.trainer
        if trainer_config.lr_decay != "none" and trainer_config.lr_decay_iterations == 0:
            trainer_config = dataclasses.replace(trainer_config,
                                                 lr_decay_iterations=config.n_iterations)
        trainer = JointTrainer.from_config(data.shape[1], config.sampler, config.model,
                                           trainer_config, device=device)
    return trainer, target, data.to(trainer.device), callbacks


def format_summary(summary: dict[str, Any]) -> str:
    """One line: weight mean ± sd, error, acceptance, R̂, wall time."""
    def f(key: str, spec: str) -> str:
        value = summary.get(key, math.nan)
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
            else format(value, spec)
    if summary.get("data"):
        return (f"trained on {summary['data']}; acceptance local {f('local_accept', '.2f')}, "
                f"global {f('global_accept', '.2f')}; R-hat {f('rhat', '.3f')}; "
                f"{summary['wall_time']:.0f} s")
    return (f"weight {f('weight_mean', '.3f')} ± {f('weight_sd', '.3f')} (truth "
            f"{summary['truth']:.3f}, error {f('weight_error', '+.3f')}); chains "
            f"{f('neg_weight_mean', '.3f')}; acceptance local {f('local_accept', '.2f')}, "
            f"global {f('global_accept', '.2f')}; R-hat {f('rhat', '.3f')}; "
            f"{summary['wall_time']:.0f} s")


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "target_options":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: Keys a resumed run may change: its length.
LENGTH_KEYS = ("epochs", "iterations")


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The saved config of ``--out``, with the length the flags ask for.

    The flags (and ``--config``) are read as for a new run on top of the saved config; any
    setting they change other than the length is refused, naming it with both values.
    """
    saved_path = args.out / "config.json"
    if not saved_path.is_file():
        raise ValueError(f"nothing to resume: {saved_path} does not exist")
    try:
        saved = RunConfig.from_dict(json.loads(saved_path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
        raise type(err)(f"{saved_path}: not a readable run config: {err}") from None
    wanted = config_from_args(args, base=saved)
    old, new = _flat(saved.to_dict()), _flat(wanted.to_dict())
    for key in old:
        if key not in LENGTH_KEYS and old[key] != new[key]:
            raise ValueError(f"--resume: {key} is {new[key]!r} on this command line but "
                             f"{old[key]!r} in the saved run ({saved_path}); only --epochs or "
                             "--iterations may change")
    return saved.replace({k: new[k] for k in LENGTH_KEYS})


def run(args: argparse.Namespace) -> int:
    from flowmc_ebm.commands import check_device

    # Under torchrun (WORLD_SIZE > 1): the process group for the whole command, destroyed at
    # its end, by an error or not; ``cuda`` is this rank's cuda:LOCAL_RANK.
    with parallel.group_from_env(args.device) as name:
        return _run(args, check_device(name))


def _run(args: argparse.Namespace, device: Any) -> int:
    writer = parallel.is_writer()
    data_run = read_data(args)
    if data_run is not None:  # epochs count passes over the file's rows
        args.n_rows = int(data_run.points.shape[0])
    config = resume_config(args) if args.resume else config_from_args(args)
    if data_run is not None and not args.resume:
        config = data_defaults(config, args)
    if data_run is not None and args.target is not None:
        raise ValueError("--data and --target are two sources of training points; pass one")
    source = config.target if data_run is None else (
        f"{args.data} ({data_run.points.shape[0]} rows x {data_run.points.shape[1]} columns)")
    # stdout: stderr is kept for warnings and the one line of an error.
    if writer:
        print(f"training {config.sampler}-EBM on {source}: {config.n_iterations} iterations "
              f"-> {args.out}", flush=True)
    try:
        _, summary = train_run(config, args.out, resume=args.resume, progress=args.progress,
                               data=data_run, device=device, figures=args.figures)
    except TrainingInterrupted as stop:
        if writer:
            print(f"flowmc-ebm train: {stop}; resume with: flowmc-ebm train --resume --out "
                  f"{args.out}", file=sys.stderr, flush=True)
        return stop.exit_code
    if writer:
        print(f"{config.sampler}-EBM: {format_summary(summary)}")
    return 0
