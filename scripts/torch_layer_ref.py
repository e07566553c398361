#!/usr/bin/env python3
"""The 2x70B-shaped MoE decoder layer of `monta bench layer` in plain PyTorch (eager or --compile), timed alike.

It is the yardstick the CUDA issue names ("a plain PyTorch eager version of this layer reaches about 70% of the
GEMM rate"): run it on the same GPU, in the same session, as `monta bench layer`, and compare the two rows.

Same layer as monta's (model/model.cpp): RMSNorm -> Q/K/V projections -> RoPE -> causal GQA attention
(F.scaled_dot_product_attention) -> output projection -> residual; RMSNorm -> router (softmax, top-k, capacity
C = ceil(cf * S * k / E), tokens over capacity dropped) -> dispatch into (E, C, H) -> per-expert SwiGLU FFN
(torch.bmm over the experts) -> weighted combine -> residual. Parameters are bf16 with bf16 gradients (no fp32
master weights, no fp32 gradient accumulation: less work than monta does, so the comparison favours PyTorch).

Timing: as monta's `time_ms` (app/bench_cmd.cpp): warm-up, then each iteration synchronised, median of --iters.
FLOPs: monta's formula (GEMMs 3x forward, causal attention 2*S^2*H forward and 2.5x that backward).
Ceilings in the same run: one 8192^3 bf16 GEMM (burst) and the same GEMM back to back for as long as one layer
step takes (sustained).
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def time_ms(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(samples)


def rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, cos, sin):  # x (B, S, heads, D); "rotate half": the pair (x[i], x[i + D/2]) turns, as monta's
    a, b = x.float().chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).to(x.dtype)


class Layer(torch.nn.Module):
    def __init__(self, H, A, G, D, F_, E, K, cf, S, theta, eps, dev):
        super().__init__()
        bf = torch.bfloat16

        def p(*shape, std=0.02):
            return torch.nn.Parameter(torch.randn(*shape, device=dev, dtype=bf) * std)

        self.H, self.A, self.G, self.D, self.E, self.K, self.eps = H, A, G, D, E, K, eps
        self.C = int(math.ceil(cf * S * K / E))
        self.attn_norm = torch.nn.Parameter(torch.ones(H, device=dev, dtype=bf))
        self.ffn_norm = torch.nn.Parameter(torch.ones(H, device=dev, dtype=bf))
        self.wq, self.wk, self.wv, self.wo = p(A * D, H), p(G * D, H), p(G * D, H), p(H, A * D)
        self.router = p(E, H)
        self.w_gate, self.w_up, self.w_down = p(E, F_, H), p(E, F_, H), p(E, H, F_)
        inv = 1.0 / theta ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D)
        ang = torch.outer(torch.arange(S, device=dev, dtype=torch.float32), inv)  # (S, D/2)
        self.cos, self.sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]

    def forward(self, x):  # x (B, S, H)
        B, S, H = x.shape
        xn = rms_norm(x, self.attn_norm, self.eps)
        q = F.linear(xn, self.wq).view(B, S, self.A, self.D)
        k = F.linear(xn, self.wk).view(B, S, self.G, self.D)
        v = F.linear(xn, self.wv).view(B, S, self.G, self.D)
        q, k = rope(q, self.cos, self.sin), rope(k, self.cos, self.sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        try:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        except TypeError:  # PyTorch < 2.5: repeat the KV heads
            rep = self.A // self.G
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                               is_causal=True)
        h = x + F.linear(o.transpose(1, 2).reshape(B, S, self.A * self.D), self.wo)
        # MoE: router, top-k, capacity, dispatch, experts, combine.
        xn2 = rms_norm(h, self.ffn_norm, self.eps).view(B * S, H)
        probs = torch.softmax(F.linear(xn2, self.router).float(), dim=-1)
        w, idx = probs.topk(self.K, dim=-1)  # (N, K)
        onehot = F.one_hot(idx.view(-1), self.E)  # (N*K, E), token-major: earlier tokens first
        pos = (onehot.cumsum(0) - 1).gather(1, idx.view(-1, 1)).view(-1)
        keep = pos < self.C
        e_keep, p_keep = idx.view(-1)[keep], pos[keep]
        tok = torch.arange(B * S, device=x.device).repeat_interleave(self.K)[keep]
        buf = xn2.new_zeros(self.E, self.C, H)
        buf = buf.index_put((e_keep, p_keep), xn2[tok])
        gate = torch.bmm(buf, self.w_gate.transpose(1, 2))
        up = torch.bmm(buf, self.w_up.transpose(1, 2))
        eo = torch.bmm(F.silu(gate) * up, self.w_down.transpose(1, 2))  # (E, C, H)
        contrib = eo[e_keep, p_keep] * w.view(-1)[keep].to(eo.dtype)[:, None]
        moe = xn2.new_zeros(B * S, H).index_add(0, tok, contrib)
        return h + moe.view(B, S, H)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--ffn", type=int, default=28672)
    ap.add_argument("--heads", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--experts", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--capacity-factor", type=float, default=1.0)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default="")
    ap.add_argument("--compile", action="store_true",
                    help="time torch.compile(layer) (default mode; the data-dependent routing breaks the graph) "
                         "instead of eager; rows are labelled 'torch.compile layer ...'")
    a = ap.parse_args()
    torch.manual_seed(1)
    dev = torch.device("cuda")
    S, H, A, G, Fd, E, K = a.seq, a.hidden, a.heads, a.kv_heads, a.ffn, a.experts, a.top_k
    D = H // A
    # Burst GEMM ceiling first, as monta does.
    M = 8192
    ga = torch.randn(M, M, device=dev, dtype=torch.bfloat16)
    gw = torch.randn(M, M, device=dev, dtype=torch.bfloat16) * 0.01
    gemm_ms = time_ms(lambda: F.linear(ga, gw), 2, a.iters)
    gemm_tf = 2.0 * M ** 3 / (gemm_ms * 1e-3) / 1e12

    layer = Layer(H, A, G, D, Fd, E, K, a.capacity_factor, S, 10000.0, 1e-5, dev)
    x = torch.randn(1, S, H, device=dev, dtype=torch.bfloat16)
    dy = torch.randn(1, S, H, device=dev, dtype=torch.bfloat16) * 1e-3

    run = torch.compile(layer) if a.compile else layer
    warmup = 3 if a.compile else 1  # compiling happens in the first calls (forward, backward, no-grad forward)

    def step():
        y = run(x)
        y.backward(dy)

    def fwd():
        with torch.no_grad():
            run(x)

    N = float(S)
    proj = 2.0 * N * H * (2.0 * A * D + 2.0 * G * D)
    experts = 2.0 * N * K * 3.0 * H * Fd + 2.0 * N * H * E
    attn = 2.0 * S * S * H
    flops = 3.0 * (proj + experts) + 3.5 * attn
    fwd_flops = proj + experts + attn
    layer_ms = time_ms(step, warmup, a.iters)
    fwd_ms = time_ms(fwd, warmup, a.iters)
    reps = max(1, round(layer_ms / gemm_ms))

    def sustained():
        for _ in range(reps):
            F.linear(ga, gw)

    sus_ms = time_ms(sustained, 1, a.iters) / reps
    sus_tf = 2.0 * M ** 3 / (sus_ms * 1e-3) / 1e12
    shape = f"S{S} H{H} F{Fd} E{E} top{K}"
    name = "torch.compile layer" if a.compile else "torch layer"
    rows = [
        {"op": "ceiling: GEMM", "shape": f"{M}x{M}x{M}", "ms": gemm_ms, "tflops": gemm_tf},
        {"op": f"{name} fwd+bwd", "shape": shape, "ms": layer_ms, "tflops": flops / (layer_ms * 1e-3) / 1e12},
        {"op": f"{name} fwd only", "shape": shape, "ms": fwd_ms, "tflops": fwd_flops / (fwd_ms * 1e-3) / 1e12},
        {"op": "ceiling: GEMM sustained", "shape": f"{M}x{M}x{M} x{reps}", "ms": sus_ms, "tflops": sus_tf},
    ]
    lt = rows[1]["tflops"]
    print(f"torch {torch.__version__} {'compiled' if a.compile else 'eager'} layer ({torch.cuda.get_device_name()}, median of {a.iters}): "
          f"{100 * lt / gemm_tf:.1f}% of the GEMM ceiling ({100 * lt / sus_tf:.1f}% of the sustained GEMM rate); "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    print(f"{'op':28s} {'shape':34s} {'ms':>10s} {'TFLOP/s':>10s}")
    for r in rows:
        print(f"{r['op']:28s} {r['shape']:34s} {r['ms']:10.3f} {r['tflops']:10.1f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "compiled": a.compile, "gemm_tflops": gemm_tf, "gemm_sustained_tflops": sus_tf,
                       "layer_tflops": lt, "fraction_of_gemm": lt / gemm_tf, "fraction_of_sustained_gemm": lt / sus_tf,
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
