"""Webb et al.'s modular loss on a regression problem: a λ sweep of small-MLP ensembles on diabetes.

  python experiments/webb_regression.py --family=gaussian --lams=0,0.5,0.9,1 --members=8 --hidden=8 \
      --epochs=2000 --seed=0 --out=DIR

Data: scikit-learn's bundled diabetes set (442 patients, 10 features; `load_diabetes`, no download), split
once into 342 training and 100 test examples by a seeded permutation (`--split_seed`); features are
standardized with the training split's mean and standard deviation. The target is one year's disease
progression (integers 25..346):

- `gaussian` (unit variance, identity link; Webb et al. Table 1): the target standardized with the
  training split's statistics, since the family fixes the variance at 1. NLLs are in standardized units,
  the RMSE is converted back to target units.
- `poisson` (log link): the raw target as counts. Each member's output bias starts at log(mean y) so the
  first rates are of the right size.

Model: each member is `jaxens.models.MLP` with one hidden ReLU layer of `--hidden` units and one output,
the natural parameter η_j (Webb et al. §2.2). All λ values train side by side in ONE jitted program: the
λ groups are stacked on the member axis ([L·M] members, group-major, every group starting from the same
M initializations so λ is the only difference), the per-member forward pass is vmapped once over that
axis, and the loss is the sum of the groups' modular losses (eq. 4/7). The groups share no parameters,
so the gradient of the sum with respect to one group's parameters is that group's own gradient, and SGD
with momentum acts elementwise: each group trains exactly as it would alone. Training is full batch
(one step per epoch), SGD with momentum as in Webb et al. §4; at λ = 0 this is each member trained on its
own NLL with the learning rate scaled by 1/M (§3.1).

Reported per λ on the test split: the ensemble NLL (the mean natural parameter η̄, eq. 3), the mean,
smallest and largest member NLL, the ambiguity (1/M) Σ_j KL(q̄ ‖ q_j) of eq. 6, and the ensemble's RMSE
(gaussian, target units) or mean Poisson deviance (poisson); and the ensemble NLL on the training split.
By eq. 6 with λ = 1, ensemble NLL = mean member NLL − ambiguity exactly, for either family.

Writes DIR/results.csv (one row per λ), DIR/results.json (rows, settings, wall time) and, if matplotlib
imports, DIR/nll_vs_lambda.png; every file via a temporary file and a rename. A DIR that already holds
results is refused.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxens import losses
from jaxens import rng as rng_lib
from jaxens.members import map_members
from jaxens.models import MLP
from jaxens.workdir import write_bytes_atomic, write_json_atomic

PyTree = Any

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
FIGURE = "nll_vs_lambda.png"
NUM_TEST = 100

# Full-batch SGD (momentum 0.9) settings that converge for every λ in [0, 1] with M = 8, hidden = 8. The
# Poisson loss is curved in proportion to the rate (~150 here), hence its far smaller learning rate.
DEFAULTS = {
    "gaussian": {"lr": 0.1, "epochs": 2000},
    "poisson": {"lr": 0.001, "epochs": 2000},
}


@dataclasses.dataclass(frozen=True)
class Split:
    """The diabetes data for one family, features standardized with the training split's statistics.

    Attributes:
      x_train: [N, D] float32.
      y_train: [N] float32 targets as the family models them (standardized reals or raw counts).
      x_test: [T, D] float32.
      y_test: [T] float32.
      y_scale: target units per model unit (the training target's standard deviation for 'gaussian', 1 for
        'poisson'): multiplies an RMSE back into target units.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    y_scale: float


def load_split(family: str, split_seed: int = 0, num_test: int = NUM_TEST) -> Split:
    """The fixed train/test split of `sklearn.datasets.load_diabetes` for `family` ('gaussian' or 'poisson')."""
    from sklearn.datasets import load_diabetes

    if family not in ("gaussian", "poisson"):
        raise ValueError(f"family={family!r}: allowed: gaussian, poisson")
    x, y = load_diabetes(return_X_y=True)  # [442, 10] float64, [442] float64 integer-valued
    perm = np.random.default_rng(split_seed).permutation(len(y))
    test, train = perm[:num_test], perm[num_test:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / std
    if family == "gaussian":  # Unit-variance family: standardize the target (training statistics).
        y_mean, y_std = y[train].mean(), y[train].std()
        y, y_scale = (y - y_mean) / y_std, float(y_std)
    else:
        y_scale = 1.0
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return Split(f32(x[train]), f32(y[train]), f32(x[test]), f32(y[test]), y_scale)


def make_model(hidden: int) -> MLP:
    """One member: Dense(hidden) → ReLU → Dense(1), the natural parameter η."""
    return MLP(widths=(hidden,), num_classes=1)


def member_eta(model: MLP, params: PyTree, x: jax.Array) -> jax.Array:
    """One member's natural parameters η [B] for standardized features x [B, D]."""
    return model.apply({"params": params}, x)[:, 0]


def ensemble_eta(hidden: int) -> Callable[[PyTree, jax.Array], jax.Array]:
    """(params [K, ...], x [B, D]) → η [K, B]: `member_eta` vmapped once over the member axis K."""
    model = make_model(hidden)
    return map_members(lambda p, x: member_eta(model, p, x), "vmap", in_axes=(0, None))


def init_params(
    model: MLP, seed: int, members: int, groups: int, num_features: int, output_bias: float = 0.0
) -> PyTree:
    """Initial parameters of `groups` λ groups of M members, leaves [groups·M, ...] (group-major).

    Member j of every group starts from the same parameters, drawn from the init stream of member j
    (`jaxens.rng.member_streams(seed, M)`), so the groups differ only in λ. The output bias is set to
    `output_bias` (log of the mean count for the Poisson family).
    """
    x0 = jnp.zeros((1, num_features), jnp.float32)

    @jax.jit
    def init(seed, bias):  # Seed and bias as arguments: one compilation whatever their values.
        keys = rng_lib.member_streams(seed, members).init  # [M, 2]
        params = jax.vmap(lambda key: model.init({"params": key}, x0)["params"])(keys)  # [M, ...]
        params["head"]["bias"] = jnp.full_like(params["head"]["bias"], bias)
        return jax.tree.map(lambda a: jnp.concatenate([a] * groups), params)  # [L·M, ...]

    return init(jnp.uint32(seed), jnp.float32(output_bias))


def make_optimizer(lr: float, momentum: float) -> optax.GradientTransformation:
    """SGD with momentum (Webb et al. §4); elementwise, so the stacked groups never interact."""
    return optax.sgd(lr, momentum=momentum or None)


def sweep_loss(
    apply_all: Callable, params: PyTree, x: jax.Array, y: jax.Array, lams: jax.Array, family: str
) -> tuple[jax.Array, jax.Array]:
    """Σ_l L_λl over the L stacked groups (eq. 4 as NLLs, eq. 7), and the per-group losses [L].

    Args:
      apply_all: (params [L·M, ...], x [B, D]) → η [L·M, B].
      params: leaves [L·M, ...].
      x: [B, D] standardized features.
      y: [B] targets.
      lams: [L] λ per group.
      family: 'gaussian' or 'poisson'.
    """
    eta = apply_all(params, x)  # [L·M, B]
    eta = eta.reshape(lams.shape[0], -1, eta.shape[-1])  # [L, M, B]
    per_group = jax.vmap(lambda out, lam: losses.modular_loss(out, y, lam, family))(eta, lams)  # [L]
    return per_group.sum(), per_group


def train_sweep(
    params: PyTree,
    split: Split,
    lams: Sequence[float],
    family: str,
    hidden: int,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
) -> tuple[PyTree, np.ndarray]:
    """Trains all λ groups together, full batch, `epochs` SGD steps in one jitted `lax.scan`.

    Args:
      params: leaves [L·M, ...] from `init_params`.
      split: the data.
      lams: the L values of λ, each in [0, 1].
      family: 'gaussian' or 'poisson'.
      hidden: hidden units per member (must match `params`).
      epochs: full-batch steps.
      lr, momentum: SGD settings, the same for every group.

    Returns:
      (trained params [L·M, ...], per-group training loss before each step [epochs, L]).
    """
    for i, lam in enumerate(lams):
        losses.check_lam(float(lam), f"lams[{i}]")
    apply_all = ensemble_eta(hidden)
    tx = make_optimizer(lr, momentum)

    @jax.jit
    def run(params, x, y, lams):
        grad_fn = jax.value_and_grad(lambda p: sweep_loss(apply_all, p, x, y, lams, family), has_aux=True)

        def step(carry, _):
            params, opt_state = carry
            (_, per_group), grads = grad_fn(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), per_group

        (params, _), curve = jax.lax.scan(step, (params, tx.init(params)), None, length=epochs)
        return params, curve

    lams_arr = jnp.asarray(lams, jnp.float32)
    params, curve = run(params, jnp.asarray(split.x_train), jnp.asarray(split.y_train), lams_arr)
    return jax.block_until_ready(params), np.asarray(curve)


def poisson_deviance(eta: jax.Array, y: jax.Array) -> jax.Array:
    """Mean Poisson deviance 2 [y log(y/μ) − (y − μ)], μ = exp(η); η, y [B] → scalar."""
    mu = jnp.exp(eta)
    return (2.0 * (jax.scipy.special.xlogy(y, y) - y * eta - (y - mu))).mean()


def metric_columns(family: str) -> list[str]:
    """The per-λ result columns after 'lam', in table order."""
    error = "test_rmse" if family == "gaussian" else "test_deviance"
    return [
        "test_ensemble_nll",
        "test_member_nll_mean",
        "test_member_nll_min",
        "test_member_nll_max",
        "test_ambiguity",
        error,
        "train_ensemble_nll",
    ]


def evaluate(params: PyTree, split: Split, lams: Sequence[float], family: str, hidden: int) -> list[dict[str, float]]:
    """One row per λ: test ensemble/member NLLs, ambiguity, RMSE or deviance; training ensemble NLL."""
    apply_all = ensemble_eta(hidden)
    num_groups = len(lams)

    def group_metrics(out, out_train, y, y_train):  # out [M, T], out_train [M, N] → scalars
        member = losses.member_nll(out, y, family)  # [M]
        eta_bar = losses.ensemble_natural_parameter(out)  # [T]
        metrics = {
            "test_ensemble_nll": losses.ensemble_nll(out, y, family),
            "test_member_nll_mean": member.mean(),
            "test_member_nll_min": member.min(),
            "test_member_nll_max": member.max(),
            "test_ambiguity": losses.ambiguity(out, family),
        }
        if family == "gaussian":
            metrics["test_rmse"] = jnp.sqrt(jnp.mean(jnp.square(eta_bar - y))) * split.y_scale
        else:
            metrics["test_deviance"] = poisson_deviance(eta_bar, y)
        metrics["train_ensemble_nll"] = losses.ensemble_nll(out_train, y_train, family)
        return metrics

    @jax.jit
    def metrics_all(params, x, y, x_train, y_train):
        out = apply_all(params, x).reshape(num_groups, -1, y.shape[0])  # [L, M, T]
        out_train = apply_all(params, x_train).reshape(num_groups, -1, y_train.shape[0])  # [L, M, N]
        return jax.vmap(group_metrics, in_axes=(0, 0, None, None))(out, out_train, y, y_train)  # each [L]

    metrics = jax.device_get(metrics_all(params, split.x_test, split.y_test, split.x_train, split.y_train))
    columns = metric_columns(family)  # Pytree outputs come back key-sorted: restore the column order.
    return [{"lam": float(lam), **{k: float(metrics[k][i]) for k in columns}} for i, lam in enumerate(lams)]


def run_sweep(
    family: str,
    lams: Sequence[float],
    members: int,
    hidden: int,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    seed: int = 0,
    split_seed: int = 0,
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """Loads the split, initializes, trains every λ group in one program and evaluates.

    Returns:
      (rows, one per λ in the given order; info: initial and trained params [L·M, ...], split, curve).
    """
    split = load_split(family, split_seed)
    bias = math.log(float(split.y_train.mean())) if family == "poisson" else 0.0
    params0 = init_params(make_model(hidden), seed, members, len(lams), split.x_train.shape[1], bias)
    params, curve = train_sweep(params0, split, lams, family, hidden, epochs, lr, momentum)
    rows = evaluate(params, split, lams, family, hidden)
    return rows, {"params0": params0, "params": params, "split": split, "curve": curve}


def _refuse_existing(out: str) -> None:
    for name in (RESULTS_CSV, RESULTS_JSON):
        path = os.path.join(out, name)
        if os.path.exists(path):
            raise SystemExit(f"{path} already exists: refusing to overwrite results; choose another --out or remove it")


def _write_figure(path: str, rows: list[dict[str, float]], family: str) -> bool:
    """NLL against λ (ensemble and mean member; their gap is the ambiguity). False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    lams = [r["lam"] for r in rows]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(lams, [r["test_ensemble_nll"] for r in rows], "o-", label="ensemble (mean η)")
    ax.plot(lams, [r["test_member_nll_mean"] for r in rows], "s--", label="mean member")
    ax.set_xlabel("λ")
    ax.set_yscale("log")  # At λ = 1 the members drift far apart: their NLL dwarfs the ensemble's.
    ax.set_ylabel("test NLL")
    ax.set_title(f"diabetes, {family}")
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return True


def format_table(rows: list[dict[str, float]]) -> str:
    cols = [k for k in rows[0] if k != "lam"]
    lines = ["lam    " + "  ".join(f"{c:>20}" for c in cols)]
    for r in rows:
        lines.append(f"{r['lam']:<5.3g}  " + "  ".join(f"{r[c]:>20.4f}" for c in cols))
    return "\n".join(lines)


def _parse_lams(text: str) -> list[float]:
    try:
        lams = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--lams={text!r}: comma-separated numbers expected") from e
    if not lams:
        raise argparse.ArgumentTypeError("--lams: at least one value")
    return lams


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(DEFAULTS), default="gaussian")
    parser.add_argument("--lams", type=_parse_lams, default=[0.0, 0.5, 0.9, 1.0], help="comma-separated λ in [0, 1]")
    parser.add_argument("--members", type=int, default=8, help="M members per λ")
    parser.add_argument("--hidden", type=int, default=8, help="hidden units per member")
    parser.add_argument("--epochs", type=int, default=None, help="full-batch steps (default: per family)")
    parser.add_argument("--lr", type=float, default=None, help="SGD learning rate (default: per family)")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0, help="initialization seed")
    parser.add_argument("--split_seed", type=int, default=0, help="train/test permutation seed")
    parser.add_argument("--out", required=True, help="directory for results.csv, results.json and the figure")
    args = parser.parse_args(argv)
    for i, lam in enumerate(args.lams):
        try:
            losses.check_lam(lam, f"--lams[{i}]")
        except ValueError as e:
            parser.error(str(e))
    if args.members < 1 or args.hidden < 1:
        parser.error("--members and --hidden must be positive")
    epochs = args.epochs if args.epochs is not None else DEFAULTS[args.family]["epochs"]
    lr = args.lr if args.lr is not None else DEFAULTS[args.family]["lr"]

    os.makedirs(args.out, exist_ok=True)
    _refuse_existing(args.out)  # Before training: fail fast.
    start = time.perf_counter()
    rows, _ = run_sweep(
        args.family, args.lams, args.members, args.hidden, epochs, lr, args.momentum, args.seed, args.split_seed
    )
    wall_s = time.perf_counter() - start
    settings = {
        "family": args.family,
        "members": args.members,
        "hidden": args.hidden,
        "epochs": epochs,
        "lr": lr,
        "momentum": args.momentum,
        "seed": args.seed,
        "split_seed": args.split_seed,
    }
    tidy = [{**settings, **row} for row in rows]

    _refuse_existing(args.out)  # Again: another run may have written meanwhile.
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(tidy[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(tidy)
    write_bytes_atomic(os.path.join(args.out, RESULTS_CSV), buf.getvalue().encode())
    write_json_atomic(
        os.path.join(args.out, RESULTS_JSON),
        {"settings": settings, "rows": rows, "wall_s": wall_s, "backend": jax.default_backend()},
    )
    figure = _write_figure(os.path.join(args.out, FIGURE), rows, args.family)

    print(
        f"diabetes, {args.family}: M={args.members}, hidden={args.hidden}, {epochs} full-batch epochs, lr={lr}, "
        f"seed={args.seed}; {len(rows)} λ groups in one program, {wall_s:.1f} s ({jax.default_backend()})"
    )
    print(format_table(rows))
    print(f"wrote {os.path.join(args.out, RESULTS_CSV)}, {RESULTS_JSON}" + (f", {FIGURE}" if figure else ""))
    return rows


if __name__ == "__main__":
    main()
