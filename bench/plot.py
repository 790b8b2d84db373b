"""Draw the scale part's figures: latency against stored keys, and RSS over calls.

Runs in ``bench/.venv-plot`` (matplotlib is not a gateway dependency):
``plot.py DATA.json OUT.png``, with DATA written by ``part_scale.py``.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(data_path: str, out_path: str) -> None:
    data = json.loads(open(data_path).read())
    rss = data.get("rss")
    fig, axes = plt.subplots(1, 2 if rss else 1, figsize=(11 if rss else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    styles = {"claim": "-", "replay": "--"}
    for backend, sizes in data["sizes"].items():
        xs = sorted(int(s) for s in sizes)
        for leg, style in styles.items():
            ys = [sizes[str(x)][leg]["p50_ms"] for x in xs]
            p90 = [sizes[str(x)][leg]["p90_ms"] for x in xs]
            line = ax.plot(xs, ys, style, marker="o", label=f"{backend} {leg} p50")[0]
            ax.fill_between(xs, ys, p90, color=line.get_color(), alpha=0.08)
    ax.set_xscale("log")
    ax.set_xlabel("stored keys")
    ax.set_ylabel("ms per call (p50; band to p90)")
    ax.set_ylim(bottom=0)
    ax.set_title("Gateway latency against stored keys (stdio)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if rss:
        ax2 = axes[0][1]
        calls = [n for n, _ in rss["series_mb"]]
        mb = [m for _, m in rss["series_mb"]]
        ax2.plot(calls, mb, marker="o")
        ax2.set_xlabel("calls after warm-up (new key, then its replay)")
        ax2.set_ylabel("gateway RSS, MB")
        ax2.set_ylim(0, max(mb) * 1.25)
        ax2.set_title("Gateway RSS over calls (SQLite, 32 in flight)")
        ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
