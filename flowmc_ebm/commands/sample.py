"""``flowmc-ebm sample``: run a sampler on a named target or on an EBM that ``train`` produced,
and save the trace (``--out DIR``: ``DIR/trace.npz``), or stream it chunk by chunk to a run
directory that a killed or stopped run resumes (``--stream DIR --resume``).

With ``--model RUN`` (a ``train`` output directory or one of its checkpoints) the chains start
from the run's persistent chains, the ``flowmc`` kernel proposes with the run's trained flow, and
a run trained with ``--data`` is sampled in the data's own units (its standardization, kept in
the checkpoint, is undone).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import torch

from flowmc_ebm.commands import (
    DEVICE_HELP,
    check_device,
    load_model,
    make_target,
    nonnegative_int,
    positive_float,
    positive_int,
    target_help,
)

HELP = ("sample a named target or a trained EBM (--model RUN) with a samplers kernel; write the "
        "trace to --out DIR, or stream it to a resumable run directory")
KERNELS = ("mala", "hmc", "ula", "flowmc", "pt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--target", help=target_help())
    what.add_argument("--model", metavar="RUN", type=Path,
                      help="a `flowmc-ebm train` output directory (its newest readable "
                           "checkpoint) or a checkpoint file (.pt)")
    p.add_argument("--dim", type=positive_int, default=None, help="dimension, for high_dim")
    p.add_argument("--target-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the target's constructor, TOML value, e.g. "
                        "--target-option 'weights=[0.2, 0.8]'")
    p.add_argument("--kernel", choices=KERNELS, default="flowmc",
                   help="mala, hmc, ula, flowmc (MALA with flow moves; with --model the run's "
                        "trained flow) or pt (parallel tempering from a broad Gaussian reference: "
                        "N(0, (2 init_scale)² I) for --target, twice the chains' spread for "
                        "--model; it finds modes no chain starts in, see docs/tempering.md)")
    p.add_argument("--chains", type=positive_int, default=256, help="chains, run as one batch")
    p.add_argument("--steps", type=positive_int, default=1000, help="draws per chain after warm-up")
    p.add_argument("--warmup", type=nonnegative_int, default=300,
                   help="warm-up steps (step sizes and the flow tuned, then frozen)")
    p.add_argument("--thin", type=positive_int, default=1, help="keep every k-th draw")
    p.add_argument("--step-size", type=positive_float, default=0.05,
                   help="initial step size (tuned in warm-up)")
    p.add_argument("--init-scale", type=positive_float, default=3.0,
                   help="with --target: chains start from N(0, init_scale² I), as a user who "
                        "does not know the modes (with --model they start from the run's chains)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="output directory: the trace is written to OUT/trace.npz "
                                     "(a path ending in .npz is taken as the trace file itself)")
    where.add_argument("--stream", metavar="DIR",
                       help="run directory to stream the draws into, one chunk file at a time; "
                            "each chunk commits the run's state, so --resume continues it")
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="draws (after thinning) per chunk file with --stream (default 1000)")
    p.add_argument("--resume", action="store_true",
                   help="with --stream: continue the run in DIR (same flags; starts it if DIR is "
                        "new)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_kernel(name: str, log_prob, dim: int, step_size: float, flow=None, reference=None):
    """The kernel ``name`` on ``log_prob``; ``flowmc`` proposes with ``flow`` (default: a new
    RealNVP trained during warm-up); ``pt`` tempers from ``reference`` (a distribution)."""
    import samplers
    from flowmc_ebm.flows import make_flow

    if name == "mala":
        return samplers.MALA(log_prob, step_size)
    if name == "hmc":
        return samplers.HMC(log_prob, step_size, n_leapfrog=10)
    if name == "ula":
        return samplers.ULA(log_prob, step_size)
    if name == "pt":
        return samplers.ParallelTempering(log_prob, reference, local_step_size=step_size)
    flow = make_flow(dim, transforms=4) if flow is None else flow
    return samplers.FlowMC(log_prob, flow, n_local=2, flow_lr=1e-2, local_step_size=step_size)


def output_trace_path(out: str) -> Path:
    """``OUT/trace.npz`` for an output directory; a path ending in .npz is the file itself."""
    from flowmc_ebm.commands import check_output_file, make_output_directory

    if out.endswith(".npz"):
        return check_output_file(Path(out))
    return make_output_directory(Path(out)) / "trace.npz"


def run(args: argparse.Namespace) -> int:
    import samplers

    if args.stream is None and (args.resume or args.chunk_size is not None):
        flag = "--resume" if args.resume else "--chunk-size"
        raise ValueError(f"{flag} applies to a streamed run; pass --stream DIR with it")
    if args.model is not None and (args.dim is not None or args.target_option):
        flag = "--dim" if args.dim is not None else "--target-option"
        raise ValueError(f"{flag} applies to --target; a --model has its own dimension")
    device = check_device(args.device)
    out = output_trace_path(args.out) if args.out else None
    g = torch.Generator(device=device).manual_seed(args.seed)
    torch.manual_seed(args.seed)
    if args.model is not None:
        model = load_model(args.model, device)
        log_prob, dim, what = model.log_prob, model.dim, f"the EBM of {model.path}"
        index = torch.randint(0, model.pool.shape[0], (args.chains,), generator=g, device=device)
        x0 = model.pool[index]
        flow = model.flow
        reference = None
        if args.kernel == "pt":
            from flowmc_ebm.diagnostics import broad_reference

            reference = broad_reference(model.pool.detach().cpu()[None])
            reference = type(reference)(reference.loc.to(device),
                                        covariance_matrix=reference.covariance_matrix.to(device))
    else:
        target = make_target(args.target, args.dim, args.target_option)
        log_prob, dim, what, flow = target.log_prob, target.dim, args.target, None
        x0 = args.init_scale * torch.randn(args.chains, dim, generator=g, device=device)
        zeros = torch.zeros(dim, device=device)
        reference = torch.distributions.Independent(
            torch.distributions.Normal(zeros, 2 * args.init_scale * torch.ones_like(zeros)), 1)
        if flow is None and args.kernel == "flowmc":
            from flowmc_ebm.flows import make_flow

            flow = make_flow(dim, transforms=4).to(device)
    kernel = build_kernel(args.kernel, log_prob, dim, args.step_size, flow, reference)
    if args.stream is None:
        trace = samplers.sample(kernel, x0, args.steps, warmup=args.warmup, thin=args.thin,
                                progress=not args.no_progress, generator=g)
        trace.save(out)
        print(f"wrote {out}: {trace.n_chains} chains x {trace.n_draws} draws of {args.kernel} on "
              f"{what} in {trace.wall_time:.1f} s")
        return 0
    try:
        run = samplers.sample(kernel, x0, args.steps, warmup=args.warmup, thin=args.thin,
                              progress=not args.no_progress, generator=g, out=args.stream,
                              chunk_size=args.chunk_size, resume=args.resume)
    except samplers.SamplingInterrupted as stop:
        done = samplers.open_trace(stop.path)
        again = "the same command" + ("" if args.resume else " with --resume")
        print(f"flowmc-ebm sample: stopped by {signal.Signals(stop.signal).name} after committing "
              f"{done.n_draws} draws to {stop.path}; run {again} to continue", file=sys.stderr)
        return 128 + stop.signal
    resumed = f", resumed {run.resumes} times" if run.resumes else ""
    print(f"streamed {run.n_draws} draws x {args.chains} chains of {args.kernel} on {what} "
          f"to {args.stream} in {len(run.files)} chunks, {run.wall_time:.1f} s{resumed}")
    return 0
