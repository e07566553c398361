#!/usr/bin/python3
"""Plots one or more monta run directories: training and validation loss against tokens (with the corpus's entropy
floor when the run has one), tokens/s and MFU against steps. Reads <run>/metrics.jsonl and <run>/run_info.json
(both written by `monta train`); writes one PNG.

    scripts/plot_run.py runs/tiny [runs/other ...] -o docs/results/default_run.png
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402


def load_run(run_dir):
    """Rows of metrics.jsonl by step (a resumed run may repeat a step: the last line wins) and run_info.json."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"plot_run: {path} does not exist (is {run_dir} a monta run directory?)")
    rows = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows[r["step"]] = r
    info_path = os.path.join(run_dir, "run_info.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    return [rows[s] for s in sorted(rows)], info


def finite(v):
    return v is not None and math.isfinite(v)


def mfu(row, info):
    """MFU from tokens/s and run_info.json's FLOPs per token, peak and world size (the metrics' own mfu field is
    rounded to 5 digits, too coarse for a CPU run); the metrics field when run_info.json lacks them."""
    if all(k in info for k in ("train_flops_per_token", "peak_tflops", "world")):
        return row.get("tokens_per_s", 0) * info["train_flops_per_token"] / info["world"] / (info["peak_tflops"] * 1e12)
    return row.get("mfu", 0)


def smooth(values, window):
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot(runs, out, title):
    fig, (ax_loss, ax_tps, ax_mfu) = plt.subplots(1, 3, figsize=(13, 3.8), dpi=80)
    floors, all_losses = set(), []
    for i, (name, rows, info) in enumerate(runs):
        color = f"C{i}"
        prefix = f"{name} " if len(runs) > 1 else ""
        tokens_per_step = info.get("tokens_per_step", 1)
        unit = "tokens" if "tokens_per_step" in info else "steps x 1 (no run_info.json)"
        train = [(r["step"] * tokens_per_step, r["loss"]) for r in rows if finite(r.get("loss"))]
        val = [(r["step"] * tokens_per_step, r["val_loss"]) for r in rows if finite(r.get("val_loss"))]
        all_losses += [v for _, v in train + val]
        if train:
            x, y = zip(*train)
            ax_loss.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
            ax_loss.plot(x, smooth(y, 10), color=color, linewidth=1.4, label=f"{prefix}train (10-step mean)")
        if val:
            x, y = zip(*val)
            ax_loss.plot(x, y, color=color, linestyle="--", marker="o", markersize=3.5, label=f"{prefix}validation")
        if finite(info.get("entropy_floor")):
            floors.add(info["entropy_floor"])
        steps = [r["step"] for r in rows]
        ax_tps.plot(steps, [r.get("tokens_per_s", 0) for r in rows], color=color, linewidth=0.9, label=name)
        ax_mfu.plot(steps, [100.0 * mfu(r, info) for r in rows], color=color, linewidth=0.9, label=name)
    if all_losses:
        low = min(all_losses + list(floors))
        ax_loss.set_yscale("log")
        ax_loss.set_ylim(low * 0.95, max(all_losses) * 1.05)
        ax_loss.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
        ax_loss.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    for f in sorted(floors):
        ax_loss.axhline(f, color="k", linestyle=":", linewidth=1.0, label=f"entropy floor {f:.3f}")
    ax_loss.set_xlabel(unit)
    ax_loss.set_ylabel("cross-entropy (nats/token)")
    ax_loss.set_title("loss")
    ax_loss.legend(fontsize=7)
    ax_tps.set_xlabel("step")
    ax_tps.set_ylabel("tokens/s")
    ax_tps.set_title("throughput")
    ax_mfu.set_xlabel("step")
    ax_mfu.set_ylabel("MFU (% of train.peak_tflops)")
    ax_mfu.set_title("model FLOPs utilisation")
    if len(runs) > 1:
        ax_tps.legend(fontsize=7)
    for ax in (ax_loss, ax_tps, ax_mfu):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    ap.add_argument("-o", "--out", default="run.png", help="output PNG (default run.png)")
    ap.add_argument("--title", default="", help="figure title")
    a = ap.parse_args()
    runs = []
    for d in a.runs:
        rows, info = load_run(d)
        if not rows:
            sys.exit(f"plot_run: {d}/metrics.jsonl has no rows")
        runs.append((os.path.basename(os.path.normpath(d)), rows, info))
    plot(runs, a.out, a.title)
    print(f"plot_run: wrote {a.out}")


if __name__ == "__main__":
    main()
