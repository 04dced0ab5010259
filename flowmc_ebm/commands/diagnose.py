"""``flowmc-ebm diagnose``: mixing and mode-weight report of a saved trace."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("diagnose a trace (.npz, or a directory streamed by `sample --stream`): R-hat, ESS, mode "
        "weights with error bars, mode hopping, figures")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", help="a .npz written by `flowmc-ebm sample` or samplers.Trace.save, "
                                 "or a run directory written by `sample --stream` (a run still "
                                 "going or killed is read up to its last chunk)")
    p.add_argument("--target", default=None, help="named target: gives true weights and mode labels")
    p.add_argument("--dim", type=int, default=None, help="dimension, for high_dim")
    p.add_argument("--n-modes", type=int, default=None,
                   help="without a target: find this many modes by clustering")
    p.add_argument("--out", default=None, help="directory for summary.json and figures")
    p.add_argument("--max-draws", type=int, default=None,
                   help="for a streamed directory: keep every k-th draw, read chunk by chunk, so "
                        "at most this many are held (default: what fits in a quarter of the read "
                        "limit, half the available memory)")


def run(args: argparse.Namespace) -> int:
    import samplers
    from flowmc_ebm.commands import make_output_directory
    from flowmc_ebm.diagnostics import report
    from flowmc_ebm.targets import get_target

    path = Path(args.trace)
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"no trace file at {path}")
    if args.max_draws is not None and (args.max_draws < 1 or not path.is_dir()):
        raise ValueError(f"--max-draws applies to a streamed directory and must be >= 1; got "
                         f"{args.max_draws} for {path}")
    target = None
    if args.target is not None:  # before the (slow) work, like the output directory
        target = get_target(args.target, **({"dim": args.dim} if args.dim else {}))
    if path.is_dir():
        trace = _load_streamed(path, args.max_draws)
    else:
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


def _load_streamed(path: Path, max_draws: int | None):
    """A streamed directory as one trace, thinned while reading where it would not fit."""
    import samplers
    from samplers.trace import read_limit

    run = samplers.open_trace(path)
    if not run.files:
        raise ValueError(f"streamed trace {path} holds no completed chunk yet")
    if max_draws is None:
        first = next(run.chunks())
        per_draw = (first.samples[:, :1].numel() * first.samples.element_size()
                    + sum(v[:, :1].numel() * v.element_size() for v in first.stats.values())
                    + first.log_prob[:, :1].numel() * first.log_prob.element_size())
        max_draws = max(read_limit() // 4 // max(per_draw, 1), 100)
    trace = run.load(max_draws=max_draws)
    state = "complete" if run.complete else "not complete (read up to its last chunk)"
    kept = (f"; every {trace.thin // run.thin}-th draw kept, {trace.n_draws} of {run.n_draws}, "
            "to fit memory" if trace.thin != run.thin else "")
    print(f"{path}: streamed run, {state}, {len(run.files)} chunks{kept}")
    return trace
