#!/usr/bin/env python3
"""Writes tests/model/golden_tiny.h5: one training step's forward and backward of the tiny model of
tests/model/golden_tiny.ini, computed independently of monta in PyTorch float64 on the CPU (autograd for the
backward), from the weights exactly as `monta train` initialises them. tests/model/test_golden.cpp compares monta.

A developer tool, not run in CI (CI has no torch). Regenerate after a deliberate change of the model's math:
    apt-get install -y python3-h5py python3-numpy && pip install torch   # h5py, numpy, torch for this python3
    cmake --build build --target monta
    python3 scripts/make_golden.py --monta build/bin/monta        # rewrites tests/model/golden_tiny.h5
The weights come from monta itself: `monta train --train.steps 0 --checkpoint.interval 1` saves the initial state,
`monta export` writes it as full logical tensors. Everything else (data, forward, objective, gradients) is here.

The model math (README "Model and numerics decisions"): embedding -> L x [RMSNorm -> causal GQA attention with
rotate-half RoPE -> residual -> RMSNorm -> MoE -> residual] -> RMSNorm -> LM head -> cross-entropy. MoE: router
softmax over experts, top-k (ties to the lower expert id), combine weight = the chosen expert's probability (not
renormalised), capacity C = max(min_capacity, ceil(cf * N * K / E)) per micro-batch handed out choice-major (every
token's first choice, in token order, then every second choice, ...), choices over capacity dropped; SwiGLU experts.
Objective of one step of M micro-batches (model/model.h training_objective):
    loss_total = sum_m CE_sum_m / (M * N) + (1 / M) * sum_m sum_l (aux_coef * aux_ml + z_coef * z_ml),
aux_ml = E * sum_e f_e * P_e (f: top-k picks before dropping / (N K), P: mean probability), z_ml = mean_n lse_n^2.
"""
import argparse
import configparser
import math
import os
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INT_KEYS = ["vocab", "hidden", "layers", "heads", "kv_heads", "ffn", "experts", "top_k", "seq_len", "min_capacity"]
FLOAT_KEYS = ["capacity_factor", "rope_theta", "norm_eps", "init_std", "aux_loss_coef", "z_loss_coef"]
DATA_SEED = 20261201  # the golden's tokens and targets (numpy PCG64)


def monta_weights(monta, ini):
    """The initial weights as monta writes them: a 0-step run saves its state, export gives full tensors."""
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        subprocess.run([monta, "train", "--config", ini, "--train.run_dir", run, "--train.steps", "0",
                        "--checkpoint.interval", "1", "--train.device", "cpu"], check=True)
        ckpts = sorted(d for d in os.listdir(os.path.join(run, "checkpoints")) if d.startswith("step_"))
        assert ckpts == ["step_00000000"], ckpts
        out = os.path.join(tmp, "weights.h5")
        subprocess.run([monta, "export", "--checkpoint", os.path.join(run, "checkpoints", ckpts[0]), "--out", out],
                       check=True)
        with h5py.File(out, "r") as f:
            return {name: np.asarray(f[name], dtype=np.float64) for name in f}


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):  # x (B, S, heads, D): the pair (x[i], x[i + D/2]) at position s turns by s * theta^(-2i/D)
    S, D = x.shape[1], x.shape[3]
    inv = torch.tensor([math.pow(theta, -2.0 * i / D) for i in range(D // 2)], dtype=torch.float64)
    ang = torch.outer(torch.arange(S, dtype=torch.float64), inv)
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
    a, b = x[..., : D // 2], x[..., D // 2:]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


def attention(xn, w, P, m):  # causal GQA, scale 1/sqrt(D); query head a reads KV head a // (A / G)
    B, S, H = xn.shape
    A, G = m["heads"], m["kv_heads"]
    D = H // A
    q = rope((xn @ w[P + "wq"].T).view(B, S, A, D), m["rope_theta"]).transpose(1, 2)
    k = rope((xn @ w[P + "wk"].T).view(B, S, G, D), m["rope_theta"]).transpose(1, 2)
    v = (xn @ w[P + "wv"].T).view(B, S, G, D).transpose(1, 2)
    k, v = k.repeat_interleave(A // G, dim=1), v.repeat_interleave(A // G, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    mask = torch.ones(S, S, dtype=torch.bool).tril()
    o = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v  # (B, A, S, D)
    return o.transpose(1, 2).reshape(B, S, A * D) @ w[P + "wo"].T


def moe(xn, w, P, m, stats):  # xn (N, H) -> (N, H); appends the layer's router statistics to stats
    N = xn.shape[0]
    E, K = m["experts"], m["top_k"]
    C = max(m["min_capacity"], math.ceil(m["capacity_factor"] * N * K / E))
    rl = xn @ w[P + "router"].T
    probs = torch.softmax(rl, dim=-1)
    p = probs.detach().numpy()
    idx = np.argsort(-p, axis=1, kind="stable")[:, :K]  # descending, ties to the lower expert id
    ps = np.sort(p, axis=1)[:, ::-1]
    margin = float((ps[:, K - 1] - ps[:, K]).min()) if K < E else 1.0
    counts = np.zeros(E, dtype=np.int64)
    kept = np.zeros((N, K), dtype=bool)
    for k in range(K):  # choice-major
        for n in range(N):
            kept[n, k] = counts[idx[n, k]] < C
            counts[idx[n, k]] += 1
    out = torch.zeros_like(xn)
    for e in range(E):
        rows, ks = np.nonzero((idx == e) & kept)
        if len(rows) == 0:
            continue
        r = torch.from_numpy(rows)
        x = xn[r]
        h = torch.nn.functional.silu(x @ w[P + "w_gate"][e].T) * (x @ w[P + "w_up"][e].T)
        y = (h @ w[P + "w_down"][e].T) * probs[r, torch.from_numpy(idx[rows, ks])][:, None]
        out = out.index_add(0, r, y)
    f = torch.from_numpy(counts.astype(np.float64)) / (N * K)
    aux = E * (f * probs.mean(0)).sum()
    z = torch.logsumexp(rl, dim=-1).pow(2).mean()
    stats.append({"aux": aux, "z": z, "dropped": int((~kept).sum()), "margin": margin, "C": C})
    return out


def forward(tokens, w, m):  # tokens (B, S) -> logits (B*S, V), per-layer router statistics
    B, S = tokens.shape
    x = w["embed"][torch.from_numpy(tokens.astype(np.int64))]
    stats = []
    for l in range(m["layers"]):
        P = f"layers.{l}."
        h = x + attention(rms_norm(x, w[P + "attn_norm"], m["norm_eps"]), w, P, m)
        xn = rms_norm(h, w[P + "ffn_norm"], m["norm_eps"]).view(B * S, -1)
        x = h + moe(xn, w, P, m, stats).view(B, S, -1)
    return rms_norm(x, w["final_norm"], m["norm_eps"]).view(B * S, -1) @ w["lm_head"].T, stats


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--monta", default=os.path.join(ROOT, "build/bin/monta"))
    ap.add_argument("--config", default=os.path.join(ROOT, "tests/model/golden_tiny.ini"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests/model/golden_tiny.h5"))
    a = ap.parse_args()
    ini = configparser.ConfigParser(inline_comment_prefixes="#")
    ini.read(a.config)
    m = {k: int(ini["model"][k]) for k in INT_KEYS} | {k: float(ini["model"][k]) for k in FLOAT_KEYS}
    B, gb = int(ini["train"]["micro_batch"]), int(ini["train"]["global_batch"])
    M, S, V, N = gb // B, m["seq_len"], m["vocab"], B * m["seq_len"]

    w = {k: torch.tensor(v, requires_grad=True) for k, v in monta_weights(a.monta, a.config).items()}
    rng = np.random.default_rng(DATA_SEED)
    tokens = rng.integers(0, V, size=(M, B, S), dtype=np.int32)
    targets = rng.integers(0, V, size=(M, B, S), dtype=np.int32)

    ce_scale, aux_scale = 1.0 / (M * N), 1.0 / M
    total = torch.zeros((), dtype=torch.float64)
    logits, ce_sum, aux, z, dropped, margin = [], [], [], [], [], 1.0
    for mb in range(M):
        lg, stats = forward(tokens[mb], w, m)
        t = torch.from_numpy(targets[mb].reshape(-1).astype(np.int64))
        ce = (torch.logsumexp(lg, dim=-1) - lg.gather(1, t[:, None])[:, 0]).sum()
        router = sum(m["aux_loss_coef"] * s["aux"] + m["z_loss_coef"] * s["z"] for s in stats)
        total = total + ce_scale * ce + aux_scale * router
        logits.append(lg.detach().numpy())
        ce_sum.append(ce.item())
        aux.append([s["aux"].item() for s in stats])
        z.append([s["z"].item() for s in stats])
        dropped.append(sum(s["dropped"] for s in stats))
        margin = min([margin] + [s["margin"] for s in stats])
    total.backward()
    # A near-tie in top-k could route differently in monta's arithmetic; the golden needs clear choices.
    assert margin > 1e-6, f"top-k margin {margin} too small for a golden"
    assert min(dropped) > 0, "the golden config should drop tokens"

    with h5py.File(a.out, "w") as f:
        f.attrs["config_ini"] = open(a.config).read()
        f.attrs["generator"] = f"scripts/make_golden.py, torch {torch.__version__}, float64 CPU"
        for k in INT_KEYS:
            f.attrs[k] = np.int64(m[k])
        for k in FLOAT_KEYS:
            f.attrs[k] = np.float64(m[k])
        f.attrs["seed"] = np.int64(int(ini["train"]["seed"]))  # train.seed: the weights' init
        f.attrs["micro_batch"], f.attrs["micro_batches"] = np.int64(B), np.int64(M)
        f.attrs["ce_scale"], f.attrs["aux_scale"] = np.float64(ce_scale), np.float64(aux_scale)
        f["tokens"], f["targets"] = tokens, targets  # (M, B, S) int32
        f["logits"] = np.stack(logits)  # (M, N, V)
        f["ce_sum"] = np.array(ce_sum)  # (M,) summed token cross-entropy
        f["aux"], f["z"] = np.array(aux), np.array(z)  # (M, L) per micro-batch and layer, before coefficients
        f["dropped"] = np.array(dropped, dtype=np.int64)  # (M,) (token, choice) pairs dropped, over layers
        f["loss_total"] = np.float64(total.item())
        for name, t in sorted(w.items()):
            f["weights/" + name] = t.detach().numpy()
            f["grads/" + name] = t.grad.numpy()
    print(f"wrote {a.out}: loss_total {total.item():.15g}, CE {sum(ce_sum) * ce_scale:.15g}, dropped {dropped}, "
          f"capacity {stats[0]['C']}, top-k margin {margin:.3g}, {os.path.getsize(a.out)} bytes")


if __name__ == "__main__":
    main()
