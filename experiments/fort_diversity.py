"""Fort et al. §4–5: trajectories, subspace samples and independent optima in function space.

  python -m jaxens.train --config=configs/fort_fmnist_mlp.py --workdir=runs/fort_fmnist
  python experiments/fort_diversity.py --workdir=runs/fort_fmnist --out=results/fort_fmnist

Reads a finished run whose members' weights were snapshotted along training (`config.trajectory.every`) and
computes, with `jaxens.subspace` samplers fitted to the last `--window` snapshots of a member:

- Fig. 2/3: weight cosine similarity and prediction disagreement between the snapshots of one trajectory,
  and between the final members (independent optima); Fig. 2c/4: t-SNE of the predictions of every
  snapshot of every member together with subspace samples around the base member.
- Fig. 6, the diversity–accuracy plane: for each method (random subspace, dropout subspace, diagonal and
  low-rank Gaussian, weight averaging) samples around the base member at a range of strengths, each with
  its test accuracy and its disagreement with the base member (raw and normalized by the sample's error,
  §4.3); the other members (independent optima) on the same axes; the App. D limit curves, and (Fig. S6)
  the member of App. D.3's one-parameter family that best fits the subspace samples, its exponent e in
  results.json (plane.family_fit: pooled and per method; `metrics.fit_family_exponent`).
- Fig. 8: baseline, subspace sampling, ensemble and ensemble + subspace sampling against ensemble size on
  accuracy, NLL and Brier score (samples with validation accuracy below `--threshold` are rejected, §5).
- Fig. 9: the same under distribution shift (additive Gaussian noise at CIFAR-10-C's five gaussian_noise
  severities σ = 0.08, 0.12, 0.18, 0.26, 0.38 of the pixel range, on a test subset) and on the run's own
  `config.eval.shifted` sets (e.g. cifar10_corrupted/*); the JS divergence between 5 samples of each
  method, 5 independent members and 5 snapshots of one trajectory on all of them and on the run's
  `config.eval.ood` sets (e.g. svhn_cropped). Each shifted/OOD set contributes `--num_shifted` examples.

New weights get BatchNorm statistics recomputed on training batches before evaluation
(docs/definitions.md#batchnorm-statistics; `jaxens.landscape.predict_points`). Writes OUT/results.json,
OUT/plane.csv, OUT/comparison.csv, OUT/js.csv and figures OUT/fig2_trajectory.png, OUT/fig6_plane.png,
OUT/fig8_ensembles.png, OUT/fig9_shift.png, each atomically; an OUT that already holds results is refused.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax
import jax.numpy as jnp
import numpy as np

from jaxens import data as data_lib
from jaxens import landscape, metrics, run, subspace, trajectory
from jaxens.workdir import write_bytes_atomic, write_json_atomic

FILES = (
    "results.json",
    "plane.csv",
    "comparison.csv",
    "js.csv",
    "fig2_trajectory.png",
    "fig6_plane.png",
    "fig8_ensembles.png",
    "fig9_shift.png",
)
METHODS = ("random", "dropout", "diagonal", "low_rank")
NOISE_SEVERITIES = (0.08, 0.12, 0.18, 0.26, 0.38)  # CIFAR-10-C gaussian_noise σ, as fractions of the pixel range.


class Analysis:
    """The restored run, its evaluation inputs (normalized), and predictions of many weight vectors."""

    def __init__(self, workdir: str, num_shifted: int, seed: int, chunk: int):
        self.restored = run.restore(workdir)
        r = self.restored
        self.model, ds = r.model, r.dataset
        self.traj = trajectory.load(workdir)
        self.chunk = chunk
        if not ds.val_x.shape[0]:
            raise SystemExit(
                f"error: {workdir} holds no validation split (set config.data.val_size) for the rejection threshold"
            )
        rng = np.random.default_rng(seed)
        test_x, test_y = np.asarray(ds.test_x), np.asarray(ds.test_y)
        idx = rng.choice(test_x.shape[0], min(num_shifted, test_x.shape[0]), replace=False)
        top = float(np.asarray(ds.train_x).max())  # The pixel range (255 for images stored as uint8).
        self.sets = {"val": (ds.val_x, ds.val_y), "test": (test_x, test_y)}
        self.kinds = {"val": "val", "test": "test"}
        for s, sigma in enumerate(NOISE_SEVERITIES, 1):
            noisy = test_x[idx].astype(np.float32) + rng.normal(size=test_x[idx].shape) * sigma * top
            self.sets[f"noise_{s}"] = (np.clip(noisy, 0, top), test_y[idx])
            self.kinds[f"noise_{s}"] = "shifted"
        # The run's own shifted and OOD test sets (config.eval.shifted / ood, e.g. CIFAR-10-C, SVHN).
        for name, extra in data_lib.load_eval_sets(r.config).items():
            pick = rng.choice(extra.x.shape[0], min(num_shifted, extra.x.shape[0]), replace=False)
            self.sets[name] = (np.asarray(extra.x)[pick], np.asarray(extra.y)[pick])
            self.kinds[name] = extra.kind
        self.names = list(self.sets)
        sizes = [self.sets[n][0].shape[0] for n in self.names]
        self.bounds = np.cumsum([0, *sizes])
        self.x = jnp.concatenate([ds.normalize(jnp.asarray(self.sets[n][0])) for n in self.names])  # [N_all, ...]
        self.labels = {n: jnp.asarray(self.sets[n][1]) for n in self.names}
        # BatchNorm recomputation batches: up to 10 training batches (unused for models without BatchNorm).
        b = r.config.train.batch_size
        j = max(1, min(10, ds.train_x.shape[0] // b))
        order = rng.permutation(ds.train_x.shape[0])[: j * b]
        self.train_x = ds.normalize(jnp.asarray(np.asarray(ds.train_x)[order])).reshape(j, b, *ds.input_shape)

    def predict(self, params, batch_stats=None, fresh: bool = True) -> dict[str, jax.Array]:
        """{set: [P, N_set, C]} logits of P networks (params leaves [P, ...]); `fresh` weights get BatchNorm
        statistics recomputed (snapshots keep their own)."""
        p = jax.tree.leaves(params)[0].shape[0]
        if batch_stats is None:  # Any template of the right shapes; recomputed below when BatchNorm exists.
            batch_stats = jax.tree.map(
                lambda s: jnp.broadcast_to(s[:1], (p, *s.shape[1:])), self.restored.state.batch_stats
            )
        variables = {"params": params}
        if jax.tree.leaves(batch_stats):
            variables["batch_stats"] = batch_stats
        logits = landscape.predict_points(
            self.model.apply, variables, self.x, self.train_x if fresh else None, self.chunk
        )
        return {n: logits[:, self.bounds[i] : self.bounds[i + 1]] for i, n in enumerate(self.names)}


def _accuracy(logits, labels) -> np.ndarray:
    return 1.0 - np.asarray(metrics.error(logits, labels))


def draw(method: str, key, theta0, iterates, strengths, rank: int):
    """Samples around one member, one per strength (leaves [S, ...]).

    strength: random → t (relative step), dropout → p_keep, diagonal / low_rank → scale of the fitted
    Gaussian's standard deviation; weight averaging ignores it (one point).
    """
    strengths = jnp.asarray(strengths, jnp.float32)
    keys = jax.random.split(key, strengths.shape[0])
    if method == "random":
        return jax.vmap(lambda k, t: subspace.random_subspace(k, theta0, t))(keys, strengths)
    if method == "dropout":
        return jax.vmap(lambda k, p: subspace.dropout_subspace(k, theta0, p))(keys, strengths)
    if method == "diagonal":
        fit = subspace.diagonal_fit(iterates)
        return jax.vmap(lambda k, s: subspace.diagonal_sample(k, fit, s))(keys, strengths)
    if method == "low_rank":
        fit = subspace.low_rank_fit(iterates, rank)
        return jax.vmap(lambda k, s: subspace.low_rank_sample(k, fit, s))(keys, strengths)
    raise ValueError(f"method={method!r}: allowed: {', '.join(METHODS)}")


def plane_grid(method: str, num: int) -> np.ndarray:
    """Strengths that sweep a method from its solution towards chance accuracy (Fig. 6's clouds)."""
    if method == "random":
        return np.geomspace(0.02, 2.0, num)
    if method == "dropout":
        return np.linspace(0.98, 0.3, num)
    return np.geomspace(1.0, 1000.0, num)  # Gaussians: multiples of the fitted standard deviation.


def natural(method: str, key, num: int, args) -> np.ndarray:
    """§5's sampling distributions: t ~ U(0, --random_t), p_keep ~ U(--dropout_min, 1), Gaussians as fitted."""
    u = np.asarray(jax.random.uniform(key, (num,)))
    if method == "random":
        return u * args.random_t
    if method == "dropout":
        return args.dropout_min + u * (1 - args.dropout_min)
    return np.full(num, args.gaussian_scale)


def _member(tree, m):
    return jax.tree.map(lambda x: x[m], tree)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


def accepted_samples(a: Analysis, method, key, m, iterates, args) -> dict[str, jax.Array]:
    """`--samples` samples around member m whose validation accuracy reaches `--threshold` ({set: [S, N, C]})."""
    theta0 = _member(a.restored.state.params, m)
    kept = []
    for _ in range(args.max_rounds):
        k1, k2, key = jax.random.split(key, 3)
        params = draw(method, k1, theta0, iterates, natural(method, k2, args.samples, args), args.rank)
        logits = a.predict(params)
        ok = subspace.accepted(_accuracy(logits["val"], a.labels["val"]), args.threshold)
        kept.append({n: v[ok] for n, v in logits.items()})
        if sum(int(k["val"].shape[0]) for k in kept) >= args.samples:
            break
    out = {n: jnp.concatenate([k[n] for k in kept])[: args.samples] for n in a.names}
    return out


def ensemble_scores(member_logits: jax.Array, labels) -> dict[str, float]:
    """Accuracy, NLL and Brier score of the mean-probability ensemble of [M, N, C] logits."""
    ens = metrics.ensemble_log_probs(member_logits, "mean_prob")
    return {
        "accuracy": float(1 - metrics.error(ens, labels)),
        "nll": float(metrics.nll(ens, labels)),
        "brier": float(metrics.brier(ens, labels)),
    }


def analyse(args) -> dict:
    started = time.time()
    a = Analysis(args.workdir, args.num_shifted, args.seed, args.chunk)
    state = a.restored.state
    k = state.step.shape[0]
    if k < 2:
        raise SystemExit(f"error: {args.workdir} has {k} member; the comparison with independent optima needs >= 2")
    window = min(args.window, len(a.traj.steps))
    base = args.base
    key = jax.random.PRNGKey(args.seed)
    num_classes = a.restored.dataset.num_classes
    test_y = a.labels["test"]
    out = {
        "settings": {
            **vars(args),
            "workdir": os.path.abspath(args.workdir),
            "members": k,
            "snapshot_steps": a.traj.steps.tolist(),
            "window": window,
        }
    }

    finals = a.predict(state.params, state.batch_stats, fresh=False)  # {set: [K, N, C]}
    base_test = finals["test"][base]
    base_acc = float(_accuracy(base_test, test_y))

    # Fig. 2/3: along the base member's trajectory and across the final members.
    snaps = trajectory.flatten_points(a.traj.params)  # [S·K, ...]
    snap_stats = trajectory.flatten_points(a.traj.batch_stats) if jax.tree.leaves(a.traj.batch_stats) else None
    snap_all = a.predict(snaps, snap_stats, fresh=False)  # {set: [S·K, N, C]}
    snap_logits = snap_all["test"]
    s_count = len(a.traj.steps)
    mine = np.arange(s_count) * k + base
    along = trajectory.similarity(_member(snaps, mine), snap_logits[mine])
    across = trajectory.similarity(state.params, finals["test"])
    out["trajectory"] = {
        "steps": a.traj.steps.tolist(),
        "cosine": np.asarray(along["cosine"]).tolist(),
        "disagreement": np.asarray(along["disagreement"]).tolist(),
    }
    out["optima"] = {
        "cosine": np.asarray(across["cosine"]).tolist(),
        "disagreement": np.asarray(across["disagreement"]).tolist(),
    }

    # Fig. 6: the diversity–accuracy plane around the base member.
    iterates = _member(a.traj.params, (slice(-window, None), base))
    theta0 = _member(state.params, base)
    rows = []

    def add_points(method, strengths, logits):
        acc = _accuracy(logits, test_y)
        dis = np.asarray(jax.vmap(lambda member: metrics.disagreement(base_test, member))(logits))
        for s, ac, d in zip(strengths, acc, dis):
            rows.append(
                dict(
                    method=method,
                    strength=float(s),
                    accuracy=float(ac),
                    disagreement=float(d),
                    normalized=float(d / max(1 - ac, 1e-12)),
                )
            )

    tsne_extra = {}
    for method in METHODS:
        key, sub = jax.random.split(key)
        strengths = np.repeat(plane_grid(method, args.plane_strengths), args.plane_repeats)
        logits = a.predict(draw(method, sub, theta0, iterates, strengths, args.rank))["test"]
        add_points(method, strengths, logits)
        tsne_extra[method] = logits[: args.plane_strengths * args.plane_repeats : args.plane_repeats][:4]
    wa = a.predict(jax.tree.map(lambda x: x[None], subspace.weight_average(iterates)))["test"]
    add_points("weight_average", [0.0], wa)
    others = [m for m in range(k) if m != base]
    add_points("independent", [float(m) for m in others], finals["test"][np.asarray(others)])
    traj_rows = mine[:-1]  # The base member's earlier snapshots.
    add_points("trajectory", a.traj.steps[:-1].tolist(), snap_logits[traj_rows])
    out["plane"] = {"base_accuracy": base_acc, "num_classes": num_classes, "rows": rows}
    out["plane"]["verdict"] = plane_verdict(rows, base_acc)
    out["plane"]["family_fit"] = family_fits(rows, base_acc, num_classes)

    # Fig. 8 and 9: ensembles with and without subspace samples, on test and shifted sets; JS divergence.
    samples = {}  # (method, member) → {set: [S, N, C]}
    for method in METHODS:
        for m in range(k):
            key, sub = jax.random.split(key)
            its = _member(a.traj.params, (slice(-window, None), m))
            samples[method, m] = accepted_samples(a, method, sub, m, its, args)
    was = _stack(
        [
            jax.tree.map(lambda x: x[None], subspace.weight_average(_member(a.traj.params, (slice(-window, None), m))))
            for m in range(k)
        ]
    )
    wa_logits = a.predict(was)  # {set: [K, N, C]}
    comparison = []
    eval_sets = [n for n in a.names if a.kinds[n] in ("test", "shifted")]  # Labelled with the task's classes.
    for name in eval_sets:
        y = a.labels[name]
        for n in range(1, k + 1):
            members = finals[name][:n]
            comparison.append(
                dict(set=name, size=n, variant="baseline", method="", **ensemble_scores(finals[name][:1], y))
            )
            comparison.append(dict(set=name, size=n, variant="ensemble", method="", **ensemble_scores(members, y)))
            comparison.append(
                dict(
                    set=name,
                    size=n,
                    variant="subspace",
                    method="weight_average",
                    **ensemble_scores(wa_logits[name][:1], y),
                )
            )
            comparison.append(
                dict(
                    set=name,
                    size=n,
                    variant="ensemble+subspace",
                    method="weight_average",
                    **ensemble_scores(wa_logits[name][:n], y),
                )
            )
            for method in METHODS:
                one = samples[method, 0][name]
                many = jnp.concatenate([samples[method, m][name] for m in range(n)])
                counts = [int(samples[method, m][name].shape[0]) for m in range(n)]
                if min(counts) == 0:
                    continue  # Every draw was rejected for some member.
                comparison.append(dict(set=name, size=n, variant="subspace", method=method, **ensemble_scores(one, y)))
                comparison.append(
                    dict(set=name, size=n, variant="ensemble+subspace", method=method, **ensemble_scores(many, y))
                )
    out["comparison"] = comparison
    out["accepted"] = {
        f"{method}/{m}": int(samples[method, m]["test"].shape[0]) for method in METHODS for m in range(k)
    }

    js_rows = []
    five = min(5, k)
    late = mine[-(2 * five) :: 2][-five:] if s_count >= 2 * five else mine[-five:]  # Spread over the late trajectory.
    for name in [n for n in a.names if n != "val"]:  # JS needs no labels: OOD sets too.
        groups = {"independent": finals[name][:five], "trajectory": snap_all[name][late]}
        for method in METHODS:
            if samples[method, base][name].shape[0] >= 2:
                groups[method] = samples[method, base][name][:five]
        for method, logits in groups.items():
            js_rows.append(
                dict(set=name, method=method, members=int(logits.shape[0]), js=float(metrics.js_divergence(logits)))
            )
    out["js"] = js_rows

    emb_points = jnp.concatenate(
        [snap_logits[:, : args.tsne_examples]] + [v[:, : args.tsne_examples] for v in tsne_extra.values()]
    )
    emb = trajectory.tsne(emb_points, seed=args.seed)
    labels_tsne = [f"member {p % k}" for p in range(snap_logits.shape[0])] + [
        f"{m} around member {base}" for m, v in tsne_extra.items() for _ in range(v.shape[0])
    ]
    out["tsne"] = {"xy": emb.tolist(), "labels": labels_tsne}
    out["wall_time_s"] = time.time() - started
    return out


def family_fits(rows, base_acc, num_classes) -> dict:
    """Fig. S6: the exponent e of App. D.3's family that best fits the subspace samples, all methods pooled
    (Fort et al. fit e = 0.22 for ResNet20v1 on CIFAR-100) and per method (`metrics.fit_family_exponent`)."""
    fits = {}
    for name, methods in (("pooled", METHODS), *((m, (m,)) for m in METHODS)):
        mine = [r for r in rows if r["method"] in methods]
        if mine:
            fit = metrics.fit_family_exponent(
                [r["accuracy"] for r in mine], [r["disagreement"] for r in mine], base_acc, num_classes
            )
            fits[name] = {"exponent": fit["exponent"], "mse": fit["mse"], "points": len(mine)}
    return fits


def plane_verdict(rows, base_acc) -> dict:
    """Where the independent optima lie relative to the subspace samples at equal accuracy (Fig. 6's claim).

    For each subspace method: its samples at least as accurate as the least accurate independent optimum,
    and the largest normalized disagreement among them; the claim holds when every optimum is more diverse
    than every such sample.
    """
    optima = [r for r in rows if r["method"] == "independent"]
    floor = min(r["accuracy"] for r in optima)
    least_diverse_optimum = min(r["normalized"] for r in optima)
    per_method = {}
    for method in (*METHODS, "weight_average", "trajectory"):
        mine = [r for r in rows if r["method"] == method and r["accuracy"] >= floor]
        per_method[method] = {
            "samples_at_least_as_accurate": len(mine),
            "max_normalized": max((r["normalized"] for r in mine), default=None),
        }
    most = max((v["max_normalized"] for v in per_method.values() if v["max_normalized"] is not None), default=0.0)
    return {
        "base_accuracy": base_acc,
        "optima_accuracy_min": floor,
        "optima_accuracy_max": max(r["accuracy"] for r in optima),
        "optima_normalized_min": least_diverse_optimum,
        "optima_normalized_mean": float(np.mean([r["normalized"] for r in optima])),
        "optima_disagreement_mean": float(np.mean([r["disagreement"] for r in optima])),
        "per_method": per_method,
        "holds": least_diverse_optimum > most,
    }


def _csv(rows) -> bytes:
    text = io.StringIO()
    fields = list(dict.fromkeys(f for r in rows for f in r))
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _tick(name: str) -> str:
    return name.replace("noise_", "noise ") if name.startswith("noise_") else name


def write_results(out: dict, directory: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    write_json_atomic(os.path.join(directory, "results.json"), out)
    write_bytes_atomic(os.path.join(directory, "plane.csv"), _csv(out["plane"]["rows"]))
    write_bytes_atomic(os.path.join(directory, "comparison.csv"), _csv(out["comparison"]))
    write_bytes_atomic(os.path.join(directory, "js.csv"), _csv(out["js"]))
    figures = {}

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, name, cmap in ((axes[0], "cosine", "viridis"), (axes[1], "disagreement", "magma")):
        im = ax.imshow(np.asarray(out["trajectory"][name]), cmap=cmap)
        ax.set_title(f"{name} along member {out['settings']['base']}'s trajectory")
        ax.set_xlabel("snapshot")
        fig.colorbar(im, ax=ax)
    xy = np.asarray(out["tsne"]["xy"])
    names = out["tsne"]["labels"]
    for label in dict.fromkeys(names):
        pts = xy[[i for i, n in enumerate(names) if n == label]]
        axes[2].scatter(
            pts[:, 0],
            pts[:, 1],
            s=12 if label.startswith("member") else 30,
            marker="o" if label.startswith("member") else "s",
            label=label,
        )
    axes[2].set_title("t-SNE of predictions (Fig. 2c / 4)")
    axes[2].legend(fontsize=6)
    fig.tight_layout()
    figures["fig2_trajectory.png"] = _png(fig)

    plane = out["plane"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    a_star, c = plane["base_accuracy"], plane["num_classes"]
    acc = np.linspace(1.0 / c + 1e-3, a_star, 200)
    upper = np.asarray(metrics.diversity_upper_limit(acc, a_star, c))
    lower = np.asarray(metrics.diversity_lower_limit(acc, a_star, c))
    for ax, key, lim in ((axes[0], "disagreement", 1.0), (axes[1], "normalized", None)):
        scale = 1.0 if lim else 1.0 / (1.0 - acc)
        ax.plot(acc, upper * scale, "k--", lw=1, label="upper limit (App. D.1)")
        ax.plot(acc, lower * scale, "k:", lw=1, label="lower limit (App. D.2)")
        fitted = plane.get("family_fit", {}).get("pooled")
        if fitted:  # Fig. S6: the best-fitting member of the one-parameter family.
            p = np.linspace(0.0, 1.0, 400)
            fa, fd = (np.asarray(v) for v in metrics.diversity_family(p, a_star, c, fitted["exponent"]))
            keep = fa > 1.0 / c
            fd = fd if lim else fd / np.maximum(1.0 - fa, 1e-12)
            ax.plot(fa[keep], fd[keep], "b-", lw=1, label=f"family fit e = {fitted['exponent']:.2f} (App. D.3)")
        for method in dict.fromkeys(r["method"] for r in plane["rows"]):
            pts = [r for r in plane["rows"] if r["method"] == method]
            style = dict(marker="*", s=160, c="red") if method == "independent" else dict(s=14)
            ax.scatter([r["accuracy"] for r in pts], [r[key] for r in pts], label=method, **style)
        ax.scatter([a_star], [0.0], marker="*", s=160, c="green", label="base")
        ax.set_xlabel("test accuracy")
        ax.set_ylabel("disagreement with the base" if lim else "disagreement / (1 − accuracy)")
        ax.set_xlim(max(1.0 / c, a_star - 0.35), a_star + 0.02)
    axes[1].set_ylim(0, 1.6)
    axes[0].set_ylim(0, 1.0)
    axes[0].legend(fontsize=7)
    fig.suptitle("Diversity–accuracy plane (Fort et al. Fig. 6)")
    fig.tight_layout()
    figures["fig6_plane.png"] = _png(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    test = [r for r in out["comparison"] if r["set"] == "test"]
    for ax, metric in zip(axes, ("accuracy", "nll", "brier")):
        for variant in ("baseline", "ensemble"):
            pts = [r for r in test if r["variant"] == variant]
            ax.plot(
                [r["size"] for r in pts],
                [r[metric] for r in pts],
                "k-" if variant == "ensemble" else "k:",
                label=variant,
            )
        for method in ("weight_average", *METHODS):
            for variant, style in (("subspace", ":"), ("ensemble+subspace", "-")):
                pts = [r for r in test if r["variant"] == variant and r["method"] == method]
                if pts:
                    ax.plot([r["size"] for r in pts], [r[metric] for r in pts], style, label=f"{variant} ({method})")
        ax.set_xlabel("ensemble size")
        ax.set_title(metric)
    axes[0].legend(fontsize=6)
    fig.suptitle("Ensembles and subspace sampling (Fort et al. Fig. 8)")
    fig.tight_layout()
    figures["fig8_ensembles.png"] = _png(fig)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    sets = list(dict.fromkeys(r["set"] for r in out["comparison"]))
    k = out["settings"]["members"]
    for ax, metric in zip(axes[:2], ("accuracy", "brier")):
        for variant, method in (
            ("baseline", ""),
            ("ensemble", ""),
            *(("ensemble+subspace", m) for m in ("weight_average", *METHODS)),
        ):
            vals = [
                next(
                    (
                        r[metric]
                        for r in out["comparison"]
                        if r["set"] == s and r["size"] == k and r["variant"] == variant and r["method"] == method
                    ),
                    np.nan,
                )
                for s in sets
            ]
            ax.plot(range(len(sets)), vals, marker="o", label=f"{variant} {method}".strip())
        ax.set_xticks(range(len(sets)), [_tick(s) for s in sets], rotation=30, fontsize=7)
        ax.set_xlabel("test set (noise severity 1-5, then the run's shifted sets)")
        ax.set_title(f"{metric} (ensembles of {k})")
    js_sets = list(dict.fromkeys(r["set"] for r in out["js"]))
    for method in dict.fromkeys(r["method"] for r in out["js"]):
        vals = [next((r["js"] for r in out["js"] if r["set"] == s and r["method"] == method), np.nan) for s in js_sets]
        axes[2].plot(range(len(js_sets)), vals, marker="o", label=method)
    axes[2].set_xticks(range(len(js_sets)), [_tick(s) for s in js_sets], rotation=30, fontsize=7)
    axes[2].set_title("JS divergence of 5 samples")
    axes[0].legend(fontsize=6)
    axes[2].legend(fontsize=7)
    fig.suptitle("Under distribution shift (Fort et al. Fig. 9)")
    fig.tight_layout()
    figures["fig9_shift.png"] = _png(fig)
    plt.close("all")
    for name, data in figures.items():
        write_bytes_atomic(os.path.join(directory, name), data)


def report(out: dict) -> str:
    v = out["plane"]["verdict"]
    lines = [
        f"base member accuracy {v['base_accuracy']:.4f}; independent optima accuracy "
        f"{v['optima_accuracy_min']:.4f}-{v['optima_accuracy_max']:.4f}, disagreement with the base "
        f"{v['optima_disagreement_mean']:.4f}, normalized {v['optima_normalized_min']:.3f} (min) "
        f"{v['optima_normalized_mean']:.3f} (mean)"
    ]
    for method, m in v["per_method"].items():
        most = "-" if m["max_normalized"] is None else f"{m['max_normalized']:.3f}"
        lines.append(
            f"  {method:>15}: {m['samples_at_least_as_accurate']:3d} samples at least as accurate as the "
            f"least accurate optimum, max normalized disagreement {most}"
        )
    lines.append(f"independent optima more diverse than every subspace sample at equal accuracy: {v['holds']}")
    fits = out["plane"].get("family_fit", {})
    if fits:
        lines.append(
            "Fig. S6, exponent e of the family fitted to the subspace samples: "
            + ", ".join(f"{name} {f['exponent']:.2f}" for name, f in fits.items())
            + " (Fort et al.: 0.22 for ResNet20v1 on CIFAR-100)"
        )
    k = out["settings"]["members"]
    for r in out["comparison"]:
        if r["set"] == "test" and r["size"] == k:
            lines.append(
                f"  test, size {k}: {r['variant']:>17} {r['method']:>14}  acc {r['accuracy']:.4f}  "
                f"nll {r['nll']:.4f}  brier {r['brier']:.4f}"
            )
    js = {(r["set"], r["method"]): r["js"] for r in out["js"]}
    sets = list(dict.fromkeys(s for s, _ in js))
    lines.append(
        "JS divergence of 5 samples: "
        + "; ".join(
            f"{m} " + "/".join(f"{js.get((s, m), float('nan')):.3f}" for s in sets)
            for m in dict.fromkeys(m for _, m in js)
        )
        + f"  (sets {', '.join(sets)})"
    )
    lines.append(f"wall time {out['wall_time_s']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a finished run with trajectory snapshots and >= 2 members")
    parser.add_argument("--out", required=True)
    parser.add_argument("--base", type=int, default=0, help="the member the samplers work around")
    parser.add_argument("--window", type=int, default=5, help="last snapshots the Gaussians and WA are fitted to")
    parser.add_argument("--rank", type=int, default=4, help="rank of the low-rank Gaussian (< window)")
    parser.add_argument("--samples", type=int, default=10, help="accepted samples per member and method (§5)")
    parser.add_argument("--threshold", type=float, default=0.65, help="reject samples below this validation accuracy")
    parser.add_argument("--max_rounds", type=int, default=4, help="rounds of --samples draws before giving up")
    parser.add_argument("--random_t", type=float, default=0.2, help="§5: random-subspace steps t ~ U(0, this)")
    parser.add_argument("--dropout_min", type=float, default=0.8, help="§5: p_keep ~ U(this, 1)")
    parser.add_argument("--gaussian_scale", type=float, default=1.0, help="§5: Gaussians' std multiplier")
    parser.add_argument("--plane_strengths", type=int, default=12)
    parser.add_argument("--plane_repeats", type=int, default=3)
    parser.add_argument("--num_shifted", type=int, default=2000, help="test examples per noise severity")
    parser.add_argument("--tsne_examples", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=8, help="networks evaluated together")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    existing = [f for f in FILES if os.path.exists(os.path.join(args.out, f))]
    if existing:
        raise SystemExit(f"error: {args.out} already holds {', '.join(existing)}: refusing to overwrite results")
    if not 1 <= args.rank < args.window:
        raise SystemExit(f"error: --rank={args.rank}: must lie in [1, --window - 1] = [1, {args.window - 1}]")
    if not trajectory.steps(args.workdir):
        raise SystemExit(
            f"error: {args.workdir}: no trajectory snapshots (train with config.trajectory.every, e.g. '1ep')"
        )
    out = analyse(args)
    write_results(out, args.out)
    print(report(out))


if __name__ == "__main__":
    main()
