"""``flowmc-ebm diagnose``: mixing and mode-weight report of a saved trace."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "diagnose a trace (.npz): R-hat, ESS, mode weights with error bars, mode hopping, figures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", help="a .npz written by `flowmc-ebm sample` or samplers.Trace.save")
    p.add_argument("--target", default=None, help="named target: gives true weights and mode labels")
    p.add_argument("--dim", type=int, default=None, help="dimension, for high_dim")
    p.add_argument("--n-modes", type=int, default=None,
                   help="without a target: find this many modes by clustering")
    p.add_argument("--out", default=None, help="directory for summary.json and figures")


def run(args: argparse.Namespace) -> int:
    import samplers
    from flowmc_ebm.commands import make_output_directory
    from flowmc_ebm.diagnostics import report
    from flowmc_ebm.targets import get_target

    path = Path(args.trace)
    if not path.is_file():
        raise FileNotFoundError(f"no trace file at {path}")
    target = None
    if args.target is not None:  # before the (slow) work, like the output directory
        target = get_target(args.target, **({"dim": args.dim} if args.dim else {}))
    trace = samplers.Trace.load(path)
    if args.out:
        make_output_directory(args.out)
    if target is not None:
        if target.dim != trace.samples[0, 0].numel():
            raise ValueError(f"target {args.target} has dimension {target.dim}; the trace's draws "
                             f"have shape {tuple(trace.event_shape)}")
    result = report(trace, target=target, n_modes=args.n_modes, out=args.out)
    print(result.table())
    if args.out:
        print(f"figures and summary.json in {args.out}")
    return 0
