"""A run at a glance, from its local files only (no W&B needed).

    python -m distgan.report runs/dcgan          # writes runs/dcgan/report.png

Panels: D and G losses; D(x) and D(G(z)); every ``eval/*`` figure logged during training (FD on a log
scale, classifier score, mode KL, ...) with the best step marked; and the fixed-noise sample grids
over time (``RUN/samples/step-*.png``), oldest to newest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distgan.atomic import atomic_path
from distgan.metrics.suite import FIGURES

PANELS = (
    "fd", "cs", "mode_kl", "precision", "parzen_ll", "memorised_share", "stacked_modes", "stacked_kl", "d_overfit",
)  # fmt: skip
"""The figures of distgan.metrics.suite.FIGURES that get a panel (recall is drawn in precision's)."""


def read_metrics(path: Path) -> list[dict]:
    """Records of metrics.jsonl; a torn last line (a crash mid-write) is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) for one key; for a step logged twice (a resumed run) the later record wins."""
    d = {r["step"]: r[key] for r in rows if key in r}
    steps = sorted(d)
    return steps, [d[s] for s in steps]


def make_report(run_dir: Path, out: Path, max_grids: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    mpath = run_dir / "metrics.jsonl"
    if not mpath.is_file():
        raise FileNotFoundError(
            f"{mpath} not found: is {run_dir} a distgan run dir (python -m distgan.train --run-dir ...)?"
        )
    rows = read_metrics(mpath)
    if not rows:
        raise ValueError(f"{mpath} holds no records yet; wait for the first log tick (train.log_every)")

    evals = [
        (f"eval/{k}", FIGURES[k].title + (" / recall" if k == "precision" else ""), FIGURES[k].lower_is_better)
        for k in PANELS
        if any(f"eval/{k}" in r for r in rows)
    ]
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    if len(grids) > max_grids:  # evenly spaced, always keeping the first and the last
        idx = sorted({round(i * (len(grids) - 1) / (max_grids - 1)) for i in range(max_grids)})
        grids = [grids[i] for i in idx]
    n_plots = 2 + len(evals)
    cols = min(3, n_plots)
    plot_rows = -(-n_plots // cols)
    fig = plt.figure(figsize=(5 * cols, 3.2 * plot_rows + (3.4 if grids else 0)), dpi=100)
    gs = fig.add_gridspec(plot_rows + (1 if grids else 0), max(cols, len(grids) or 1))
    span = max(cols, len(grids) or 1) // cols

    def axis(i):
        r, c = divmod(i, cols)
        return fig.add_subplot(gs[r, c * span : (c + 1) * span])

    ax = axis(0)
    for k in ("loss/D", "loss/G"):
        ax.plot(*series(rows, k), label=k)
    ax.set_title("losses")
    ax.set_xlabel("step")
    ax.legend()
    ax = axis(1)
    for k in ("D(x)", "D(G(z))"):
        ax.plot(*series(rows, k), label=k)
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
    ax.set_ylim(0, 1)
    ax.set_title("discriminator outputs")
    ax.set_xlabel("step")
    ax.legend()
    for i, (k, title, log) in enumerate(evals):
        ax = axis(2 + i)
        steps, vals = series(rows, k)
        ax.plot(steps, vals, marker="o", ms=3, label=k.split("/")[1])
        if k == "eval/precision":
            ax.plot(*series(rows, "eval/recall"), marker="o", ms=3, label="recall")
            ax.legend()
        if log and FIGURES[k.removeprefix("eval/")].log_axis and all(v > 0 for v in vals):
            ax.set_yscale("log")
        if vals:
            best = min(range(len(vals)), key=lambda j: vals[j]) if log else max(range(len(vals)), key=lambda j: vals[j])
            ax.annotate(f"{vals[best]:.3g} @ {steps[best]}", (steps[best], vals[best]), fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("step")
    for j, g in enumerate(grids):
        ax = fig.add_subplot(gs[plot_rows, j])
        ax.imshow(Image.open(g), cmap="gray")
        ax.set_title(g.stem, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{run_dir.name}: {rows[-1]['step']} steps", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m distgan.report", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="output PNG (default RUN/report.png)")
    args = p.parse_args(argv)
    run = Path(args.run_dir)
    try:
        out = make_report(run, Path(args.out) if args.out else run / "report.png")
    except (FileNotFoundError, ValueError) as e:
        print(f"distgan: {e}", file=sys.stderr)
        return 2
    print(f"[distgan] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
