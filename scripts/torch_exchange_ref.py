#!/usr/bin/env python3
"""The published MoE token exchanges re-created in plain torch.distributed: the yardstick of `monta bench exchange`.

Three schedules of the forward dispatch under tensor x expert parallelism, on the same ranks, groups and buffer sizes
as `monta bench exchange` (comm/exchange_bench.cpp), so the two sweeps compare row by row in one device call:
  torch duplicate    DeepSpeed-MoE: every TP rank sends its whole (E, C, H) buffer over the EP all-to-all, so the
                     inter-node links carry each token tp times;
  torch drop_gather  TED (drop then gather): each TP rank sends only its 1/tp slice of the capacity over EP, then an
                     all-gather inside the TP group rebuilds the full buffer;
  torch pipelined    MoNTA's pipeline with its fixed 4 chunks: the capacity cut into 4 chunks, each chunk's EP
                     all-to-all (inter-node) overlapped with the previous chunk's TP all-gather (intra-node), the two on
                     their process groups' own streams;
  torch all_to_all(ep)  the raw EP all-to-all of the same bytes (the ceiling of the inter-node leg).
Layout as monta's (comm/groups.cpp): tp_idx = rank % tp, dp_idx = rank / tp, ep_idx = dp_idx % ep; every TP rank of a
group holds the same x (seeded by dp_idx). Dispatch result y (E/ep, ep*C, H): y[e, i*C + c] = x_i[ep_idx*E/ep + e, c]
of EP peer i; each row's result is checked against that, exactly (pure data movement).
Sizes: per rank X = E*C*H*dtype bytes from --min-bytes to --max-bytes by --factor (C rounded down to a multiple of
4*tp, at least 4*tp). Timing: warm-up, then per iteration a barrier, the schedule, a device sync; the median per rank,
the slowest rank's median reported (as monta's). --emulate-nodes N: NCCL_HOSTID per virtual node of consecutive
ranks (as `--comm.emulate_nodes`), so NCCL connects virtual nodes over sockets; GPU = rank within its node modulo the
GPU count.

Launch under MPI (ranks from OMPI_*/PMI_*/SLURM_* or torchrun's RANK/WORLD_SIZE), e.g.
  mpirun -np 4 python3 scripts/torch_exchange_ref.py --tp 2 --ep 2 --emulate-nodes 2 --json torch_exch.json
On a machine without GPUs --device cpu runs the same schedules over gloo (f32), as a functional check.
Exit status: 0 when every row's result was right, 1 otherwise, 77 when PyTorch is missing.
"""
import argparse
import json
import os
import statistics
import sys
import time

try:
    import torch
    import torch.distributed as dist
except ImportError:  # the CPU test skips on 77
    print("torch_exchange_ref: PyTorch is not installed", file=sys.stderr)
    sys.exit(77)


def env_int(*names, default=None):
    for n in names:
        if n in os.environ:
            return int(os.environ[n])
    return default


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=2)
    ap.add_argument("--experts-per-rank", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--min-bytes", type=int, default=1 << 20)
    ap.add_argument("--max-bytes", type=int, default=1 << 30)
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--chunks", type=int, default=4, help="the pipeline's chunks (MoNTA's fixed 4)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--emulate-nodes", type=int, default=0)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default="")
    return ap.parse_args()


class Ranks:
    """This rank's coordinates and groups, monta's layout."""

    def __init__(self, a, world, rank):
        tp, ep = a.tp, a.ep
        if world % (tp * ep):
            raise SystemExit(f"torch_exchange_ref: {world} ranks are not a multiple of tp {tp} x ep {ep}")
        self.tp, self.ep, self.rank, self.world = tp, ep, rank, world
        self.tp_idx, self.dp_idx = rank % tp, rank // tp
        self.ep_idx, self.edp_idx = self.dp_idx % ep, self.dp_idx // ep
        self.tp_group = self.ep_group = None
        for dp in range(world // tp):  # every rank creates every group, in the same order
            g = dist.new_group([dp * tp + i for i in range(tp)])
            if dp == self.dp_idx:
                self.tp_group = g
        for edp in range(world // (tp * ep)):
            for t in range(tp):
                g = dist.new_group([(edp * ep + j) * tp + t for j in range(ep)])
                if edp == self.edp_idx and t == self.tp_idx:
                    self.ep_group = g


def source(dp, shape, dtype, dev):
    """The dispatch buffer of data-parallel index dp: the same on every TP rank, regenerable by any rank."""
    g = torch.Generator().manual_seed(1000 + dp)
    return torch.randn(*shape, generator=g).to(dtype).to(dev)


def duplicate(x, r, E_l, C, H):
    out = torch.empty_like(x)  # (ep, E_l, C, H): from EP peer i its rows for this rank's experts
    dist.all_to_all_single(out, x, group=r.ep_group)
    return out.view(r.ep, E_l, C, H).transpose(0, 1).reshape(E_l, r.ep * C, H) if E_l > 1 else out.view(1, r.ep * C, H)


def drop_gather(x, r, E_l, C, H):
    E, s = r.ep * E_l, C // r.tp
    mine = x.view(E, r.tp, s, H)[:, r.tp_idx].contiguous()  # drop: this TP rank's slice of the capacity
    got = torch.empty_like(mine)  # (ep, E_l, s, H)
    dist.all_to_all_single(got, mine, group=r.ep_group)
    full = torch.empty((r.tp * got.shape[0],) + tuple(got.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(full, got, group=r.tp_group)  # (tp·ep, E_l, s, H): rank t's part at t·ep
    return full.view(r.tp, r.ep, E_l, s, H).permute(2, 1, 0, 3, 4).reshape(E_l, r.ep * C, H)


def pipelined(x, r, E_l, C, H, n):
    E, s = r.ep * E_l, C // (n * r.tp)
    # (n, E, s, H): chunk k's slice of this TP rank, contiguous per chunk (one copy, as the drop above)
    mine = x.view(E, n, r.tp, s, H)[:, :, r.tp_idx].permute(1, 0, 2, 3).contiguous()
    got = torch.empty_like(mine)
    full = torch.empty((n, r.tp * E, s, H), dtype=x.dtype, device=x.device)  # chunk k: TP rank t's part at t·E
    a2a = [dist.all_to_all_single(got[k], mine[k], group=r.ep_group, async_op=True) for k in range(n)]
    gathers = []
    for k in range(n):  # chunk k's gather waits for its all-to-all only; the later all-to-alls run meanwhile
        a2a[k].wait()
        gathers.append(dist.all_gather_into_tensor(full[k], got[k], group=r.tp_group, async_op=True))
    for w in gathers:
        w.wait()
    # full[k, t, i*E_l + e, c'] is row (k*tp + t)*s + c' of expert e from EP peer i
    return full.view(n, r.tp, r.ep, E_l, s, H).permute(3, 2, 0, 1, 4, 5).reshape(E_l, r.ep * C, H)


def raw_all_to_all(x, r, E_l, C, H):
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=r.ep_group)
    return None


def expected(r, E_l, C, H, dtype, dev):
    """y of this rank from the peers' regenerated buffers."""
    E = r.ep * E_l
    parts = []
    for i in range(r.ep):
        peer_dp = (r.edp_idx * r.ep + i)
        parts.append(source(peer_dp, (E, C, H), dtype, dev)[r.ep_idx * E_l:(r.ep_idx + 1) * E_l])
    return torch.cat(parts, dim=1)


def slowest_median_us(fn, a, dev):
    for _ in range(a.warmup):
        fn()
    times = []
    for _ in range(a.iters):
        dist.barrier()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = torch.tensor([statistics.median(times)], dtype=torch.float64,
                     device=dev if dev.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item()) * 1e6


def main():
    a = parse()
    world = env_int("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", default=1)
    rank = env_int("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", default=0)
    nodes = a.emulate_nodes if a.emulate_nodes > 0 else 1
    if world % nodes:
        raise SystemExit(f"torch_exchange_ref: --emulate-nodes {nodes} does not divide {world} ranks")
    per_node = world // nodes
    if a.emulate_nodes > 0:
        os.environ["NCCL_HOSTID"] = f"torchref-node-{rank // per_node}"  # NCCL sees distinct hosts: sockets between
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    if a.device == "cuda":
        local = rank % per_node if a.emulate_nodes > 0 else env_int("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK",
                                                                     default=rank)
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev)
        dtype = torch.bfloat16
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo", rank=rank, world_size=world)
        dtype = torch.float32
    r = Ranks(a, world, rank)
    es = torch.tensor([], dtype=dtype).element_size()
    E_l, H = a.experts_per_rank, a.hidden
    E = a.ep * E_l
    quantum = a.chunks * a.tp  # every chunk and TP slice whole
    rows, all_ok = [], True
    target = float(a.min_bytes)
    while target <= a.max_bytes * 1.0001:
        C = max(quantum, int(target) // (E * H * es) // quantum * quantum)
        X = E * C * H * es
        x = source(r.dp_idx, (E, C, H), dtype, dev)
        want = expected(r, E_l, C, H, dtype, dev)
        cases = [("torch all_to_all(ep)", 0, raw_all_to_all, X * (a.ep - 1) / a.ep, 0.0),
                 ("torch duplicate", 0, duplicate, X * (a.ep - 1) / a.ep, 0.0),
                 ("torch drop_gather", 0, drop_gather, X / a.tp * (a.ep - 1) / a.ep, X / a.tp * (a.tp - 1)),
                 ("torch pipelined", a.chunks, lambda *v: pipelined(*v, a.chunks), X / a.tp * (a.ep - 1) / a.ep,
                  X / a.tp * (a.tp - 1))]
        for name, chunks, fn, ep_bytes, tp_bytes in cases:
            got = fn(x, r, E_l, C, H)
            ok = True
            if got is not None:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                ok = bool(torch.equal(got, want))
            flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=dev if dev.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            ok = int(flag.item()) == 0
            all_ok &= ok
            us = slowest_median_us(lambda: fn(x, r, E_l, C, H), a, dev)
            rows.append({"op": name, "bytes": X, "chunks": chunks, "time_us": us, "algbw": X / (us * 1e-6) / 1e9,
                         "ep_bytes": ep_bytes, "tp_bytes": tp_bytes, "ok": ok})
        target *= a.factor
    if rank == 0:
        print(f"torch {torch.__version__} exchange reference: tp {a.tp} ep {a.ep} on {world} ranks, {nodes} node(s)"
              f"{' (emulated)' if a.emulate_nodes > 0 else ''}, E {E}, H {H}, {str(dtype).split('.')[-1]}, "
              f"{dist.get_backend()}, median of {a.iters} (slowest rank)")
        print(f"{'size (B)':>12s}  {'op':22s} {'chunks':>6s} {'time (us)':>12s} {'algbw':>10s}  ok")
        for w in rows:
            print(f"{w['bytes']:12d}  {w['op']:22s} {w['chunks'] or '-':>6} {w['time_us']:12.1f} {w['algbw']:10.3f}  "
                  f"{'ok' if w['ok'] else 'WRONG'}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"tool": "torch_exchange_ref", "torch": torch.__version__, "backend": dist.get_backend(),
                           "tp": a.tp, "ep": a.ep, "world": world, "nodes": nodes, "emulated": a.emulate_nodes > 0,
                           "experts_per_rank": E_l, "hidden": H, "dtype": str(dtype).split(".")[-1],
                           "iters": a.iters, "rows": rows}, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
