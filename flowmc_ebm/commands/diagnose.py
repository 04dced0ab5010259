"""``flowmc-ebm diagnose``: mixing and mode-weight report of a saved trace.

``--importance`` adds the independent cross-check of the mode weights: self-normalized
importance sampling of the model's density with a trained flow as the proposal, defensively
mixed with a broad Gaussian around the chains, compared with the chains' occupancy. It needs a
density and a flow: ``--model RUN`` (the EBM that ``train`` produced and its flow).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flowmc_ebm.commands import DEVICE_HELP, positive_int

HELP = ("diagnose a trace (.npz, or a directory streamed by `sample --stream`): R-hat, ESS, mode "
        "weights with error bars, mode hopping, figures")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", help="a .npz written by `flowmc-ebm sample` or samplers.Trace.save, "
                                 "or a run directory written by `sample --stream` (a run still "
                                 "going or killed is read up to its last chunk)")
    p.add_argument("--target", default=None, help="named target: gives true weights and mode labels")
    p.add_argument("--dim", type=positive_int, default=None, help="dimension, for high_dim")
    p.add_argument("--target-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the target's constructor (see sample --help)")
    p.add_argument("--n-modes", type=int, default=None,
                   help="without a target: find this many modes by clustering")
    p.add_argument("--model", type=Path, default=None, metavar="RUN",
                   help="the trained EBM the trace samples (a train output directory or "
                        "checkpoint): its density for the metrics, its flow for --importance")
    p.add_argument("--importance", action="store_true",
                   help="cross-check the mode weights by importance sampling with the model's "
                        "flow as proposal (needs --model)")
    p.add_argument("--n-importance", type=positive_int, default=10_000,
                   help="importance proposals")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--out", default=None, help="directory for summary.json and figures")
    p.add_argument("--max-draws", type=int, default=None,
                   help="for a streamed directory: keep every k-th draw, read chunk by chunk, so "
                        "at most this many are held (default: what fits in a quarter of the read "
                        "limit, half the available memory)")


def run(args: argparse.Namespace) -> int:
    import samplers
    from flowmc_ebm.commands import check_device, load_model, make_output_directory, make_target
    from flowmc_ebm.diagnostics import report

    path = Path(args.trace)
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"no trace file at {path}")
    if args.max_draws is not None and (args.max_draws < 1 or not path.is_dir()):
        raise ValueError(f"--max-draws applies to a streamed directory and must be >= 1; got "
                         f"{args.max_draws} for {path}")
    if args.importance and args.model is None:
        raise ValueError("--importance needs --model RUN: the trained flow is the proposal and "
                         "the EBM the density weighed")
    device = check_device(args.device)
    target = None
    if args.target is not None:  # before the (slow) work, like the output directory
        target = make_target(args.target, args.dim, args.target_option)
    model = load_model(args.model, device) if args.model is not None else None
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
    if model is not None and model.dim != trace.samples[0, 0].numel():
        raise ValueError(f"--model {args.model} is {model.dim}-D; the trace's draws have shape "
                         f"{tuple(trace.event_shape)}")
    extra = {}
    if model is not None:
        extra["log_prob"] = lambda x: model.log_prob(x.to(device)).cpu()
    if args.importance:
        proposal = model.proposal  # the flow, or the tilt it was trained around (a CPU report)
        extra.update(proposal=proposal.cpu() if hasattr(proposal, "cpu") else proposal,
                     n_importance=args.n_importance)
        extra["log_prob"] = lambda x: model.log_prob(x.to(device)).cpu()
    result = report(trace, target=target, n_modes=args.n_modes, out=args.out, **extra)
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
