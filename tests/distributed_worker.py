"""Run under ``torchrun --standalone --nproc_per_node N`` by tests/test_distributed.py; rank 0
writes what it measured as JSON to the path in argv[1]. Not a test module itself."""

import copy
import json
import sys

import torch
import torch.distributed as dist
import zuko

import samplers
from samplers.distributed import _average_gradients, sample

MEAN, SD = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])


def gaussian(x):
    return -0.5 * (((x - MEAN) / SD) ** 2).sum(-1)


def two_modes(x):
    # 0.25 N((-3, 0), I) + 0.75 N((3, 0), I)
    a = -0.5 * ((x - torch.tensor([-3.0, 0.0])) ** 2).sum(-1) + torch.log(torch.tensor(0.25))
    b = -0.5 * ((x - torch.tensor([3.0, 0.0])) ** 2).sum(-1) + torch.log(torch.tensor(0.75))
    return torch.logaddexp(a, b)


def flow_params(flow):
    return torch.cat([p.detach().flatten() for p in flow.parameters()])


def main(out, stream_dir):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {"world": world}

    # 1. MALA: every chain gathered in order, moments of the target, reproducible for a seed.
    x0 = torch.arange(63, dtype=torch.float32)[:, None].repeat(1, 2) / 63
    runs = [sample(samplers.MALA(gaussian, 0.5), x0, 500, warmup=150,
                   generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    own = sample(samplers.MALA(gaussian, 0.5), x0, 500, warmup=150,
                 generator=torch.Generator().manual_seed(7), gather=False)
    owns = [None] * world if rank == 0 else None
    dist.gather_object(own.samples, owns, dst=0)
    if rank == 0:
        result["mala_blocks_in_order"] = bool(torch.equal(torch.cat(owns), runs[0].samples))
        result["mala_block_sizes"] = [o.shape[0] for o in owns]
        t = runs[0]
        result["mala_shape"] = list(t.samples.shape)
        result["mala_identical_reruns"] = bool(torch.equal(t.samples, runs[1].samples))
        result["mala_samples"] = t.samples.double().tolist()
        result["mala_kernel"] = t.kernel

    # 2. One flow optimizer step with averaged gradients equals one step on the union of the
    #    ranks' minibatches in a single process.
    torch.manual_seed(0)
    flow = zuko.flows.RealNVP(2, transforms=2, hidden_features=(16,))
    for p in flow.parameters():
        dist.broadcast(p.data, src=0)
    single = copy.deepcopy(flow)
    batch = torch.randn(32, 2, generator=torch.Generator().manual_seed(100 + rank)) * (1 + rank)
    hooks = _average_gradients(flow, world)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    (-flow().log_prob(batch).mean()).backward()
    opt.step()
    for h in hooks:
        h.remove()
    batches = [None] * world
    dist.all_gather_object(batches, batch)
    opt1 = torch.optim.Adam(single.parameters(), lr=1e-2)
    (-single().log_prob(torch.cat(batches)).mean()).backward()
    opt1.step()
    result["flow_step_max_diff"] = float((flow_params(flow) - flow_params(single)).abs().max())

    # 3. FlowMC with a flow trained in warm-up: the flow identical on every rank afterwards,
    #    every chain hops between the two modes.
    torch.manual_seed(1)
    flow = zuko.flows.RealNVP(2, transforms=3, hidden_features=(32, 32))
    kernel = samplers.FlowMC(two_modes, flow, n_local=2, flow_lr=1e-2)
    g = torch.Generator().manual_seed(3)
    start = torch.tensor([3.0, 0.0]) + 0.3 * torch.randn(64, 2, generator=torch.Generator().manual_seed(4))
    trace = sample(kernel, start, 400, warmup=200, generator=g)
    params = [None] * world
    dist.all_gather_object(params, flow_params(flow))
    result["flowmc_flows_identical"] = all(torch.equal(params[0], p) for p in params)
    if rank == 0:
        result["flowmc_left_share"] = float((trace.samples[..., 0] < 0).double().mean())
        result["flowmc_left_share_per_chain"] = (trace.samples[..., 0] < 0).double().mean(1).tolist()
        result["flowmc_shape"] = list(trace.samples.shape)

    # 4. Parallel tempering with a tuned schedule is refused on every rank, by name.
    ref = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 5 * torch.ones(2)), 1)
    try:
        sample(samplers.ParallelTempering(two_modes, ref), start, 10, warmup=10,
               generator=torch.Generator().manual_seed(0))
        result["pt_refused"] = ""
    except NotImplementedError as err:
        result["pt_refused"] = str(err)

    # 5. Streamed: each rank into its own directory, read back as one run.
    stream = sample(samplers.MALA(gaussian, 0.5), x0, 500, warmup=150, out=stream_dir,
                    chunk_size=120, generator=torch.Generator().manual_seed(7))
    if rank == 0:
        back = samplers.open_trace(stream_dir)
        result["stream_type"] = type(back).__name__
        result["stream_equals_gathered"] = bool(torch.equal(back.load().samples, runs[0].samples))
        result["stream_chunks_equal"] = bool(torch.equal(
            torch.cat([c.samples for c in back.chunks()], 1), runs[0].samples))
        result["stream_complete"] = bool(stream.complete and back.complete)

    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def stream_only(out_dir, crash_rank_at_chunk):
    """Streamed MALA; with crash_rank_at_chunk = (r, k), rank r dies while committing chunk k."""
    import os

    from samplers import rundir

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if crash_rank_at_chunk and rank == crash_rank_at_chunk[0]:
        name = f"chunk-{crash_rank_at_chunk[1]:06d}.npz"

        def die(point, path):
            if point == "rename" and path.name == name:
                os._exit(9)

        rundir.set_fault_hook(die)
    x0 = torch.arange(63, dtype=torch.float32)[:, None].repeat(1, 2) / 63
    sample(samplers.MALA(gaussian, 0.5), x0, 500, warmup=150, out=out_dir, chunk_size=60,
           resume=True, generator=torch.Generator().manual_seed(7))
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "stream":
        stream_only(sys.argv[2], tuple(int(v) for v in sys.argv[3:5]) if len(sys.argv) > 3 else None)
    else:
        main(sys.argv[1], sys.argv[2])
