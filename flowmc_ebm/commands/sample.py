"""``flowmc-ebm sample``: run a sampler on a named target and save the trace (.npz), or stream it
chunk by chunk to a run directory that a killed or stopped run resumes (``--stream DIR --resume``).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import torch

HELP = ("sample a named target with a samplers kernel and write the trace as .npz, or stream it "
        "to a resumable run directory")
KERNELS = ("mala", "hmc", "ula", "flowmc")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="two_modes, four_modes, eight_gaussians, rings, high_dim")
    p.add_argument("--dim", type=int, default=None, help="dimension, for high_dim")
    p.add_argument("--kernel", choices=KERNELS, default="flowmc")
    p.add_argument("--chains", type=int, default=256)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--thin", type=int, default=1)
    p.add_argument("--step-size", type=float, default=0.05, help="initial step size (tuned in warm-up)")
    p.add_argument("--init-scale", type=float, default=3.0,
                   help="chains start from N(0, init_scale² I), as a user who does not know the modes")
    p.add_argument("--seed", type=int, default=0)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="path of the .npz trace to write (the run held in memory)")
    where.add_argument("--stream", metavar="DIR",
                       help="run directory to stream the draws into, one chunk file at a time; "
                            "each chunk commits the run's state, so --resume continues it")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="draws (after thinning) per chunk file with --stream (default 1000)")
    p.add_argument("--resume", action="store_true",
                   help="with --stream: continue the run in DIR (same flags; starts it if DIR is "
                        "new)")
    p.add_argument("--no-progress", action="store_true")


def build_kernel(name: str, log_prob, dim: int, step_size: float):
    import samplers
    from flowmc_ebm.flows import make_flow

    if name == "mala":
        return samplers.MALA(log_prob, step_size)
    if name == "hmc":
        return samplers.HMC(log_prob, step_size, n_leapfrog=10)
    if name == "ula":
        return samplers.ULA(log_prob, step_size)
    return samplers.FlowMC(log_prob, make_flow(dim, transforms=4), n_local=2, flow_lr=1e-2,
                           local_step_size=step_size)


def run(args: argparse.Namespace) -> int:
    import samplers
    from flowmc_ebm.commands import check_output_file
    from flowmc_ebm.targets import get_target

    if args.stream is None and (args.resume or args.chunk_size is not None):
        flag = "--resume" if args.resume else "--chunk-size"
        raise ValueError(f"{flag} applies to a streamed run; pass --stream DIR with it")
    out = check_output_file(Path(args.out)) if args.out else None
    target = get_target(args.target, **({"dim": args.dim} if args.dim else {}))
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x0 = args.init_scale * torch.randn(args.chains, target.dim, generator=g)
    kernel = build_kernel(args.kernel, target.log_prob, target.dim, args.step_size)
    if args.stream is None:
        trace = samplers.sample(kernel, x0, args.steps, warmup=args.warmup, thin=args.thin,
                                progress=not args.no_progress, generator=g)
        trace.save(out)
        print(f"wrote {out}: {trace.n_chains} chains x {trace.n_draws} draws of {args.kernel} on "
              f"{args.target} in {trace.wall_time:.1f} s")
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
    print(f"streamed {run.n_draws} draws x {args.chains} chains of {args.kernel} on {args.target} "
          f"to {args.stream} in {len(run.files)} chunks, {run.wall_time:.1f} s{resumed}")
    return 0
