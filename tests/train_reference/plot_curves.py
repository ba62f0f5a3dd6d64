#!/usr/bin/env python3
"""Plots held-out loss curves from `mixtral train` logs (train_log.csv) into one PNG.

Usage: plot_curves.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...]
x: training tokens seen; y: held-out cross-entropy (nats/token). Needs python3-matplotlib.
Also prints each run's final held-out loss and perplexity as a Markdown table row.
"""
import csv
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    out, runs = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    print("| run | tokens | held-out loss | perplexity |\n|---|---|---|---|")
    for label, d in runs:
        xs, ys = [], []
        for row in csv.DictReader(open(f"{d}/train_log.csv")):
            if row["eval_loss"]:
                xs.append(int(row["tokens"]) / 1e6)
                ys.append(float(row["eval_loss"]))
        ax.plot(xs, ys, marker=".", label=label)
        print(f"| {label} | {xs[-1]:.1f}M | {ys[-1]:.4f} | {math.exp(ys[-1]):.1f} |")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
