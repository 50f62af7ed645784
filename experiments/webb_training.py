"""Webb et al. Fig. 8, 9 and 10: what independent and joint training do to the modules, seen three ways.

  python experiments/webb_training.py --workdir=results/webb_lambda/runs/64x4 --trial=0 --out=results/webb_training
  python experiments/webb_training.py --workdir=runs/webb_cifar10 --modules=10 --out=results/webb_cifar10_training

Reads a finished λ-sweep run of `python -m jaxens.train` (e.g. a run of experiments/webb_lambda.py, or
configs/webb_cifar10_cnn.py) and, for each λ of --lams (default 0 and 1, Webb's independent and joint training):

- Fig. 9: the ensemble's and every module's test error over training (the run's metrics.jsonl, one point per
  evaluation): under joint training one module is much better than the rest (module dominance);
- Fig. 8: the first layer's filters of the first --modules modules as early stopping left them (3×3
  kernels of a CNN's first convolution, input channels averaged; a dense first layer's rows, one per hidden
  unit), and each module's mean filter norm: "a small number of strong filters when λ = 1";
- Fig. 10: the test confusion matrices (true class × predicted class, rows normalized) of the first
  --modules modules: strong diagonals at λ = 0, vertical banding (a bias to a few classes) at λ = 1.

Writes atomically OUT/training.csv (tidy: lam, epoch, scope, member, test_error), OUT/modules.csv (lam,
module, filter_norm, test_error, top_class_share: the share of test predictions going to the module's most
predicted class), OUT/results.json (the rows, the confusion matrices and the settings) and OUT/fig8_filters.png,
OUT/fig9_training.png, OUT/fig10_confusion.png. Nothing under --workdir is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import artifacts
import numpy as np

from jaxens.workdir import write_bytes_atomic, write_json_atomic

TRAINING_COLUMNS = ("lam", "epoch", "scope", "member", "test_error")
MODULE_COLUMNS = ("lam", "module", "filter_norm", "test_error", "top_class_share")


def training_curves(workdir: str, lams, rates: dict | None = None, trial: int | None = None) -> list[dict]:
    """Fig. 9: test error of each λ group's ensemble and modules at every evaluation of the members' phase
    (`rates`: λ → its group's learning rate, in a run with several per λ; `trial`: the seed, in a run with several)."""
    from jaxens import workdir as workdir_lib

    def mine(r):
        grid = r.get("grid") or {}
        rate = grid.get("learning_rate")
        if trial is not None and grid.get("seed", trial) != trial:
            return False
        return r["lam"] in lams and (rates is None or rate is None or rates.get(r["lam"]) == rate)

    return [
        dict(lam=r["lam"], epoch=r["epoch"], scope=r["scope"], member=r["member"], test_error=r["value"])
        for r in workdir_lib.MetricsLog(workdir).read()
        if r["phase"] == "members" and r["split"] == "test" and r["metric"] == "error" and mine(r)
    ]


def first_layer_filters(params, model, input_shape) -> np.ndarray:
    """[K, F, ...] the first layer's filters of every member: a convolution's [K, F, h, w] (input channels
    averaged), a dense layer's [K, F, D] rows (one per hidden unit)."""
    from jaxens.models.order import forward_order, get_path

    path = next(p for p in forward_order(model, tuple(input_shape)) if p[-1] == "kernel")
    kernel = np.asarray(get_path(params, path))  # [K, ..., in, out]
    if kernel.ndim == 3:  # Dense [K, D, F] (or a 1-D convolution [K, w, F] with one input channel).
        return np.moveaxis(kernel, -1, 1)
    return np.moveaxis(kernel.mean(axis=-2), -1, 1)  # Convolution [K, (h, w,) in, F] → [K, F, (h, w)].


def analyse(workdir: str, lams, modules: int, learning_rate=None, trial=None) -> dict:
    import jax

    from jaxens import ensemble as ensemble_lib
    from jaxens import metrics

    trial = artifacts.trial_of(workdir, trial)
    restored = artifacts.early_stopped(workdir, trial)
    plan, dataset = restored.plan, restored.dataset
    if not plan.lams:
        raise ValueError(f"{workdir}: not a modular-loss run (config.loss.lam is empty)")
    index = artifacts.lambda_groups(workdir, plan, learning_rate, trial)
    missing = [lam for lam in lams if lam not in index]
    if missing:
        raise ValueError(f"--lams: {missing} not trained in {workdir} (it has {list(index)})")
    m, shown = plan.k, min(modules, plan.k)
    predictor = ensemble_lib.Predictor(restored.model, restored.config.eval.batch_size, restored.strategy)
    logits = np.asarray(jax.device_get(predictor(restored.state, dataset.test_x, dataset)))  # [K, N, C]
    labels = np.asarray(dataset.test_y)
    filters = first_layer_filters(jax.device_get(restored.state.params), restored.model, restored.spec.input_shape)
    module_rows, confusion, shown_filters = [], {}, {}
    for lam in lams:
        g = index[lam]
        group = slice(g * m, (g + 1) * m)
        counts = np.asarray(metrics.confusion_matrix(logits[group], labels))  # [M, C, C]
        predicted = counts.sum(axis=1)  # [M, C] predictions per class
        norms = np.sqrt((filters[group] ** 2).reshape(m, filters.shape[1], -1).sum(-1)).mean(-1)  # [M]
        errors = np.asarray(metrics.error(logits[group], labels))  # [M]
        for j in range(m):
            module_rows.append(
                dict(
                    lam=lam, module=j, filter_norm=float(norms[j]), test_error=float(errors[j]),
                    top_class_share=float(predicted[j].max() / predicted[j].sum()),
                )
            )  # fmt: skip
        rows_sum = np.maximum(counts[:shown].sum(-1, keepdims=True), 1)
        confusion[lam] = (counts[:shown] / rows_sum).tolist()
        shown_filters[lam] = filters[group][:shown]
    return dict(
        training=training_curves(
            workdir, lams, {lam: dict(plan.groups[g].hyper).get("learning_rate") for lam, g in index.items()}, trial
        ),
        modules=module_rows,
        confusion=confusion,
        filters=shown_filters,
        best=restored.best,
    )


def dominance_summary(module_rows: list[dict], lam) -> dict:
    """The spread of one λ's modules: best and median module error, and the largest filter norm against the
    median (> 1 where a few modules have strong filters)."""
    mine = [r for r in module_rows if r["lam"] == lam]
    errors = np.asarray([r["test_error"] for r in mine])
    norms = np.asarray([r["filter_norm"] for r in mine])
    return dict(
        best_module_error=float(errors.min()),
        median_module_error=float(np.median(errors)),
        strongest_filters_over_median=float(norms.max() / np.median(norms)),
        top_class_share_mean=float(np.mean([r["top_class_share"] for r in mine])),
    )


def figures(result: dict, lams, title: str) -> dict[str, bytes]:
    plt = artifacts.pyplot()
    out = {}
    fig, axes = plt.subplots(1, len(lams), figsize=(5 * len(lams), 3.6), squeeze=False)
    for ax, lam in zip(axes[0], lams):
        rows = [r for r in result["training"] if r["lam"] == lam]
        for member in sorted({r["member"] for r in rows if r["scope"] == "member"}):
            pts = [r for r in rows if r["scope"] == "member" and r["member"] == member]
            ax.plot([r["epoch"] for r in pts], [r["test_error"] for r in pts], color="gray", lw=0.6, alpha=0.6)
        ens = [r for r in rows if r["scope"] == "ensemble"]
        ax.plot([r["epoch"] for r in ens], [r["test_error"] for r in ens], color="C3", lw=2, label="ensemble")
        ax.plot([], [], color="gray", lw=0.6, label="modules")
        ax.set_title(f"λ = {lam:g}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error")
        ax.legend(fontsize=8)
    fig.suptitle(f"Ensemble and module test error over training (Webb et al. Fig. 9); {title}", fontsize=9)
    fig.tight_layout()
    out["fig9_training.png"] = artifacts.png_bytes(fig)

    scale = max(float(np.abs(f).max()) for f in result["filters"].values())

    def filters(ax, f):  # f [F, ...]: one module's filters, drawn as [F, D] rows (3×3 kernels as 9 values).
        ax.imshow(
            f.reshape(f.shape[0], -1), cmap="RdBu", vmin=-scale, vmax=scale, aspect="auto", interpolation="nearest"
        )

    def confusion(ax, matrix):
        ax.imshow(np.asarray(matrix), cmap="viridis", vmin=0, vmax=1)

    title = "First-layer filters, one row per filter (Webb et al. Fig. 8)"
    out["fig8_filters.png"] = module_grid(result["filters"], lams, title, 1.6, filters)
    title = "Test confusion matrices, true class × predicted class (Webb et al. Fig. 10)"
    out["fig10_confusion.png"] = module_grid(result["confusion"], lams, title, 1.7, confusion)
    return out


def module_grid(per_lam: dict, lams, title: str, width: float, draw) -> bytes:
    """One row of panels per λ, one column per module: `draw(ax, per_lam[λ][j])` in each."""
    plt = artifacts.pyplot()
    shown = len(next(iter(per_lam.values())))
    fig, axes = plt.subplots(len(lams), shown, figsize=(width * shown, 1.9 * len(lams)), squeeze=False)
    for row, lam in enumerate(lams):
        for j, value in enumerate(per_lam[lam]):
            ax = axes[row][j]
            draw(ax, value)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"module {j}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"λ = {lam:g}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return artifacts.png_bytes(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run trained with config.loss.lam")
    parser.add_argument("--lams", default="0,1", help="the λ groups to show")
    parser.add_argument("--modules", type=int, default=8, help="modules shown in Fig. 8 and 10")
    parser.add_argument("--learning_rate", type=float, default=None, help="of a run with several per λ")
    parser.add_argument("--trial", type=int, default=None, help="the trial's seed, of a run with several")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        lams = tuple(float(x) for x in args.lams.split(",") if x)
        if not lams or args.modules < 1:
            raise ValueError("--lams needs a value and --modules must be >= 1")
        if not os.path.exists(os.path.join(args.workdir, "metrics.jsonl")):
            raise ValueError(f"--workdir={args.workdir}: no run there (no metrics.jsonl)")
        started = time.time()
        result = analyse(args.workdir, lams, args.modules, args.learning_rate, args.trial)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    summaries = {f"{lam:g}": dominance_summary(result["modules"], lam) for lam in lams}
    settings = dict(workdir=args.workdir, trial=args.trial, lams=lams, modules=args.modules)
    os.makedirs(args.out, exist_ok=True)
    write_bytes_atomic(
        os.path.join(args.out, "training.csv"), artifacts.csv_bytes(result["training"], TRAINING_COLUMNS)
    )
    write_bytes_atomic(os.path.join(args.out, "modules.csv"), artifacts.csv_bytes(result["modules"], MODULE_COLUMNS))
    stored = {k: result[k] for k in ("training", "modules", "best")}
    stored["confusion"] = {f"{lam:g}": v for lam, v in result["confusion"].items()}
    write_json_atomic(os.path.join(args.out, "results.json"), dict(**stored, summaries=summaries, settings=settings))
    for name, png in figures(result, lams, os.path.basename(os.path.normpath(args.workdir))).items():
        write_bytes_atomic(os.path.join(args.out, name), png)
    print(
        f"analysed in {time.time() - started:.0f} s; wrote {args.out}/training.csv, modules.csv, results.json, "
        "fig8_filters.png, fig9_training.png, fig10_confusion.png"
    )
    for lam, s in summaries.items():
        print(
            f"  λ={lam}: best module error {s['best_module_error']:.4f}, median {s['median_module_error']:.4f}; "
            f"strongest filters {s['strongest_filters_over_median']:.2f}x the median module's; "
            f"mean share of the top class {s['top_class_share_mean']:.3f}"
        )


if __name__ == "__main__":
    main()
