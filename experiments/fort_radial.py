"""Fort et al. §4.2 Fig. 5 and App. A Fig. S2: the radial plane through two members, and a low-loss tunnel.

  python -m jaxens.train --config=configs/mnist1d_ensemble.py --workdir=runs/mnist1d_ensemble --config.trajectory.every=2ep
  python experiments/fort_radial.py --workdir=runs/mnist1d_ensemble --out=results/fort_radial

Expected runtime: about 1 minute on 2 CPU cores with the defaults below for the MNIST-1D MLP run (the
training run itself ~30 s); most of it is the 3000-step tunnel fit and XLA compilations.

Reads a finished (or checkpointed) run of `python -m jaxens.train` with at least two members and, for two of
them (`--members`, default 0 and 1), computes:

- Fig. 5 / S1 (`jaxens.plane`): the plane through the origin and the two members' weights θ_a, θ_b, on a
  rectangular grid in orthonormal in-plane coordinates (u, v) (weight-space distances; θ_a on the u axis).
  At every point: test accuracy and loss, and agreement of its predictions with each member's (Fort's
  "function space similarity"). If the run saved trajectory snapshots (`config.trajectory.every`; read with
  `jaxens.trajectory.load`), the two members' trajectories are projected onto the plane (with their
  distance from it) and drawn on the figure; otherwise that part is skipped.
- Fig. S2 (`jaxens.tunnel`): a polygonal chain with `--bends` bends between the two members, started on the
  straight line and fitted to the training loss (Garipov et al. 2018), compared with the straight line on
  training and test loss, accuracy and agreement with each member, and the loss and error barriers
  (`jaxens.landscape.error_barrier`) of both paths.
- Fig. S3 (`jaxens.tunnel.radial_cut`): the radial cut between the origin and the fitted tunnel, each
  segment's triangle with the origin placed next to the previous one: test accuracy and agreement with each
  optimum at r·(the tunnel's point at t), for t along the tunnel and radii r from 0 to `--cut_radius`.

BatchNorm statistics are recomputed at every new point on `--recompute_batches` training batches
(docs/definitions.md#batchnorm-statistics; no effect for models without BatchNorm). Writes OUT/plane.json,
OUT/tunnel.json (the radial cut under 'radial_cut'), OUT/fig5.png, OUT/figS2.png and OUT/figS3.png, each atomically; an existing non-empty OUT is refused unless
--overwrite.
"""

from __future__ import annotations

import argparse
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

from jaxens import landscape, plane, run, subspace, trajectory, tunnel
from jaxens.workdir import write_bytes_atomic, write_json_atomic

FILES = ("plane.json", "tunnel.json", "fig5.png", "figS2.png", "figS3.png")


def _lists(tree):
    """Arrays → nested lists of Python floats/ints (for JSON)."""
    return jax.tree.map(lambda v: np.asarray(v).tolist(), tree)


def _member(tree, m: int):
    return jax.tree.map(lambda v: v[m], tree)


def member_variables(state, m: int) -> dict:
    """Member m's variables {'params', 'batch_stats'?} from a stacked ensemble state (leaves [K, ...])."""
    variables = {"params": _member(state.params, m)}
    if jax.tree.leaves(state.batch_stats):
        variables["batch_stats"] = _member(state.batch_stats, m)
    return variables


def load_trajectories(workdir: str, members, params_a, params_b):
    """Projections of the members' trajectory snapshots (and of Gaussian subspace samples around the first
    member) onto the plane, or None when the run saved no snapshots."""
    if not os.path.isdir(os.path.join(workdir, "trajectory")):
        return None
    try:
        traj = trajectory.load(workdir)
    except ValueError as e:  # An empty trajectory/ folder.
        print(f"no trajectory projection: {e}")
        return None
    project = jax.jit(jax.vmap(plane.project, in_axes=(0, None, None)))
    out = {"steps": np.asarray(traj.steps).tolist()}
    for m in members:
        snapshots = jax.tree.map(lambda v: jnp.asarray(v[:, m]), traj.params)  # leaves [S, ...]
        proj = project(snapshots, params_a, params_b)
        out[str(m)] = {"coords": proj.coords, "uv": proj.uv, "distance": proj.distance}
    # Fig. 5's pink points: a diagonal Gaussian fitted to the first member's last 5 snapshots (jaxens.subspace).
    window = min(5, len(traj.steps))
    if window >= 2:
        fit = subspace.diagonal_fit(jax.tree.map(lambda v: jnp.asarray(v[-window:, members[0]]), traj.params))
        keys = jax.random.split(jax.random.PRNGKey(0), 20)
        proj = project(jax.vmap(lambda key: subspace.diagonal_sample(key, fit))(keys), params_a, params_b)
        out["gaussian"] = {"coords": proj.coords, "uv": proj.uv, "distance": proj.distance}
    return _lists(out)


def compute(args) -> tuple[dict, dict]:
    """(plane results, tunnel results) for the run in args.workdir."""
    timings = {}
    start = time.time()
    restored = run.restore(args.workdir)
    ds, model = restored.dataset, restored.model
    k = int(restored.state.step.shape[0])
    m_a, m_b = args.members
    if k < 2 or not (0 <= m_a < k and 0 <= m_b < k) or m_a == m_b:
        raise SystemExit(f"error: --members={m_a},{m_b}: need two different members of the run's {k}")
    va, vb = member_variables(restored.state, m_a), member_variables(restored.state, m_b)
    rng = np.random.default_rng(args.seed)

    # Data: test and training subsets for evaluation; training batches for BatchNorm recomputation.
    n_test = min(args.num_test, ds.test_x.shape[0])
    test_x, test_y = ds.normalize(ds.test_x[:n_test]), ds.test_y[:n_test]
    train_all = ds.normalize(ds.train_x)  # [N_train, ...]
    order = rng.permutation(ds.train_x.shape[0])
    n_eval = min(args.num_train_eval, ds.train_x.shape[0])
    train_eval_x, train_eval_y = train_all[order[:n_eval]], ds.train_y[order[:n_eval]]
    b = restored.config.train.batch_size
    j = max(1, min(args.recompute_batches, ds.train_x.shape[0] // b))
    recompute_x = train_all[order[: j * b]].reshape((j, b, *train_all.shape[1:]))  # [J, B, ...]
    timings["restore_s"] = time.time() - start

    # Fig. 5: the radial plane.
    t0 = time.time()
    pa, pb = va["params"], vb["params"]
    frame = jax.jit(plane.frame)(pa, pb)
    trajectories = load_trajectories(args.workdir, (m_a, m_b), pa, pb)
    optima_uv = np.asarray(jax.jit(plane.to_uv)(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), frame))
    extent = [np.zeros((1, 2)), optima_uv]
    if trajectories is not None:
        extent += [np.asarray(trajectories[str(m)]["uv"]) for m in (m_a, m_b)]
    extent = np.concatenate(extent)
    lo, hi = extent.min(0), extent.max(0)
    pad = args.margin * (hi - lo).max()
    u_range, v_range = (lo[0] - pad, hi[0] + pad), (lo[1] - pad, hi[1] + pad)
    uv_grid = plane.grid(u_range, v_range, args.grid)  # [G, 2]
    coords = jax.jit(plane.from_uv)(uv_grid, frame)
    test = landscape.PathData(test_x, test_y, recompute_x)
    grid_out = plane.radial_plane(model.apply, va, vb, coords, test, chunk_size=args.chunk)
    grid_out = jax.device_get(grid_out)
    timings["plane_s"] = time.time() - t0
    optima = plane.radial_plane(model.apply, va, vb, [[1.0, 0.0], [0.0, 1.0]], test, chunk_size=None)
    plane_results = {
        "members": [m_a, m_b],
        "grid_shape": [args.grid, args.grid],
        "u": np.linspace(*u_range, args.grid).tolist(),
        "v": np.linspace(*v_range, args.grid).tolist(),
        **_lists({key: grid_out[key] for key in ("coords", "uv", "error", "loss", "agreement_a", "agreement_b")}),
        "frame": _lists(frame._asdict()),
        "optima": {
            "uv": optima_uv.tolist(),
            **_lists({key: optima[key] for key in ("error", "loss", "agreement_a", "agreement_b")}),
        },
        "trajectories": trajectories,
        "num_test": n_test,
    }

    # Fig. S2: the straight line and a fitted tunnel.
    t0 = time.time()
    fit = tunnel.fit_tunnel(
        model.apply,
        va,
        vb,
        train_all,
        ds.train_y,
        args.bends,
        args.steps,
        jax.random.PRNGKey(args.seed),
        batch_size=args.batch_size,
        learning_rate=args.lr,
        num_ts=args.num_ts,
    )
    jax.block_until_ready(fit)
    timings["tunnel_fit_s"] = time.time() - t0
    t0 = time.time()
    ts = np.linspace(0.0, 1.0, args.path_points, dtype=np.float32)
    zero = tunnel.init_bends(pa, pb, 0)
    paths = {}
    for split, (x, y) in (("train", (train_eval_x, train_eval_y)), ("test", (test_x, test_y))):
        data = landscape.PathData(x, y, recompute_x)
        for name, bends in (("linear", zero), ("tunnel", fit.bends)):
            out = jax.device_get(tunnel.evaluate_path(model.apply, va, bends, vb, ts, data))
            out["loss_barrier"] = landscape.error_barrier(out["loss"], ts)
            out["error_barrier"] = landscape.error_barrier(out["error"], ts)
            paths[f"{split}/{name}"] = _lists(out)
    timings["paths_s"] = time.time() - t0
    # Fig. S3: the radial cut stitched along the tunnel.
    t0 = time.time()
    cut_ts = np.linspace(0.0, 1.0, args.path_points, dtype=np.float32)
    radii = np.linspace(0.0, args.cut_radius, args.cut_points)
    radii = np.unique(np.append(radii, 1.0)).astype(np.float32)  # r = 1, the tunnel itself, always drawn.
    cut = tunnel.radial_cut(
        model.apply, va, fit.bends, vb, cut_ts, radii, landscape.PathData(test_x, test_y, recompute_x),
        chunk_size=args.chunk,
    )  # fmt: skip
    timings["radial_cut_s"] = time.time() - t0
    losses = np.asarray(fit.losses)
    every = max(1, len(losses) // 200)
    tunnel_results = {
        "members": [m_a, m_b],
        "paths": paths,
        "fit": {
            "bends": args.bends,
            "steps": args.steps,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "num_ts": args.num_ts,
            "loss_every": every,
            "losses": losses[::every].tolist(),
            "final_loss_mean_last_100": float(losses[-100:].mean()) if len(losses) else None,
        },
        "num_train_eval": n_eval,
        "num_test": n_test,
        "radial_cut": _lists(jax.device_get(cut)),
    }
    settings = {
        "workdir": os.path.abspath(args.workdir),
        "checkpoint_step": int(restored.step),
        "seed": args.seed,
        "grid": args.grid,
        "margin": args.margin,
        "recompute_batches": j,
        "batch_norm": "batch_stats" in va,
    }
    timings["total_s"] = time.time() - start
    plane_results["settings"] = tunnel_results["settings"] = {**settings, "timings": timings}
    return plane_results, tunnel_results


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def figures(plane_results: dict, tunnel_results: dict) -> tuple[bytes, bytes, bytes]:
    """(fig5.png, figS2.png, figS3.png) as bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m_a, m_b = plane_results["members"]
    u, v = np.asarray(plane_results["u"]), np.asarray(plane_results["v"])
    shape = (len(v), len(u))  # grid(): u varies fastest
    panels = (
        ("accuracy", 1 - np.asarray(plane_results["error"]).reshape(shape)),
        (f"agreement with optimum 1 (member {m_a})", np.asarray(plane_results["agreement_a"]).reshape(shape)),
        (f"agreement with optimum 2 (member {m_b})", np.asarray(plane_results["agreement_b"]).reshape(shape)),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    optima = np.asarray(plane_results["optima"]["uv"])
    traj = plane_results["trajectories"]
    for ax, (title, z) in zip(axes, panels):
        cs = ax.contourf(u, v, z, levels=np.linspace(0, 1, 21), cmap="viridis")
        fig.colorbar(cs, ax=ax)
        if traj is not None:
            for m, color in ((m_a, "red"), (m_b, "blue")):
                p = np.asarray(traj[str(m)]["uv"])
                ax.plot(p[:, 0], p[:, 1], "-o", color=color, ms=2.5, lw=1, label=f"trajectory {m}")
            if "gaussian" in traj:
                p = np.asarray(traj["gaussian"]["uv"])
                ax.plot(p[:, 0], p[:, 1], "o", color="hotpink", ms=3, label=f"Gaussian subspace of {m_a}")
        ax.plot(*optima[0], "*", color="red", ms=12, mec="white")
        ax.plot(*optima[1], "*", color="blue", ms=12, mec="white")
        ax.plot(0, 0, "k+", ms=10)
        ax.set_title(title)
        ax.set_xlabel("u (weight space, along optimum 1)")
        ax.set_aspect("equal")
    axes[0].set_ylabel("v")
    if traj is not None:
        axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle("Radial plane through the origin and two optima (Fort et al. Fig. 5), test set")
    fig.tight_layout()
    fig5 = _png(fig)
    plt.close(fig)

    paths = tunnel_results["paths"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, style in (("linear", "--"), ("tunnel", "-")):
        for split, color in (("train", "C0"), ("test", "C1")):
            p = paths[f"{split}/{name}"]
            t = np.asarray(p["t"])
            axes[0].plot(t, p["loss"], style, color=color, label=f"{name}, {split}")
            axes[1].plot(t, 1 - np.asarray(p["error"]), style, color=color, label=f"{name}, {split}")
        p = paths[f"test/{name}"]
        axes[2].plot(p["t"], p["agreement_a"], style, color="red", label=f"{name}: optimum 1")
        axes[2].plot(p["t"], p["agreement_b"], style, color="blue", label=f"{name}: optimum 2")
    for ax, label in zip(axes, ("loss (NLL)", "accuracy", "agreement with optimum (test)")):
        ax.set_xlabel("position t between the optima")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"Linear path vs a {tunnel_results['fit']['bends']}-bend tunnel (Fort et al. Fig. S2)")
    fig.tight_layout()
    figs2 = _png(fig)
    plt.close(fig)

    cut = tunnel_results["radial_cut"]
    t, r = np.asarray(cut["t"]), np.asarray(cut["r"])
    bends = tunnel_results["fit"]["bends"]
    panels = (
        ("test accuracy", 1 - np.asarray(cut["error"])),
        (f"agreement with optimum 1 (member {m_a})", np.asarray(cut["agreement_a"])),
        (f"agreement with optimum 2 (member {m_b})", np.asarray(cut["agreement_b"])),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (title, z) in zip(axes, panels):
        cs = ax.contourf(t, r, z.T, levels=np.linspace(0, 1, 21), cmap="viridis")  # z [T, R] → rows are radii
        fig.colorbar(cs, ax=ax)
        for i in range(1, bends + 1):  # The radial lines through the bends: where two triangles meet.
            ax.axvline(i / (bends + 1), color="yellow", lw=1)
        ax.axhline(1.0, color="white", lw=0.8, ls="--")
        ax.set_title(title)
        ax.set_xlabel("position t along the tunnel (segments stitched)")
    axes[0].set_ylabel("radius r (1 = on the tunnel, 0 = origin)")
    fig.suptitle("Radial cut between the origin and the low-loss tunnel (Fort et al. Fig. S3), test set")
    fig.tight_layout()
    figs3 = _png(fig)
    plt.close(fig)
    return fig5, figs2, figs3


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run with at least two members")
    parser.add_argument("--out", required=True, help="directory for the JSON results and the figures")
    parser.add_argument("--overwrite", action="store_true", help="replace the results in an existing --out")
    parser.add_argument("--members", default="0,1", help="the two members, comma-separated")
    parser.add_argument("--grid", type=int, default=31, help="plane grid points per axis")
    parser.add_argument("--margin", type=float, default=0.15, help="grid margin, as a fraction of the extent")
    parser.add_argument("--num_test", type=int, default=1000, help="test examples evaluated")
    parser.add_argument("--num_train_eval", type=int, default=1000, help="training examples for the path losses")
    parser.add_argument(
        "--recompute_batches", type=int, default=10, help="training batches for BatchNorm recomputation"
    )
    parser.add_argument("--chunk", type=int, default=64, help="plane points evaluated together")
    parser.add_argument("--bends", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000, help="tunnel optimizer steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="tunnel Adam learning rate")
    parser.add_argument("--batch_size", type=int, default=128, help="tunnel minibatch size")
    parser.add_argument("--num_ts", type=int, default=1, help="positions t sampled per tunnel step")
    parser.add_argument("--path_points", type=int, default=41, help="positions t evaluated on each path")
    parser.add_argument("--cut_points", type=int, default=21, help="Fig. S3: radii evaluated per position t")
    parser.add_argument("--cut_radius", type=float, default=1.3, help="Fig. S3: the largest radius (1 = the tunnel)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        args.members = tuple(int(m) for m in args.members.split(","))
    except ValueError:
        args.members = ()
    if len(args.members) != 2:
        raise SystemExit(f"error: --members={args.members!r}: expected two member indices, e.g. 0,1")
    if args.grid < 2 or args.path_points < 2 or args.cut_points < 2 or args.bends < 1 or args.steps < 1:
        raise SystemExit("error: --grid, --path_points and --cut_points must be >= 2, --bends and --steps >= 1")
    if not (np.isfinite(args.cut_radius) and args.cut_radius > 0):
        raise SystemExit(f"error: --cut_radius={args.cut_radius}: must be > 0")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise SystemExit(f"error: {args.out} exists and is not empty: refusing to overwrite results (pass --overwrite)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise SystemExit(f"error: --out={args.out} is not a directory")

    plane_results, tunnel_results = compute(args)
    fig5, figs2, figs3 = figures(plane_results, tunnel_results)
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "plane.json"), plane_results)
    write_json_atomic(os.path.join(args.out, "tunnel.json"), tunnel_results)
    write_bytes_atomic(os.path.join(args.out, "fig5.png"), fig5)
    write_bytes_atomic(os.path.join(args.out, "figS2.png"), figs2)
    write_bytes_atomic(os.path.join(args.out, "figS3.png"), figs3)

    o = plane_results["optima"]
    print(
        f"plane: test accuracy at optimum 1 {1 - o['error'][0]:.4f}, optimum 2 {1 - o['error'][1]:.4f}; "
        f"agreement between them {o['agreement_a'][1]:.4f}; best grid accuracy {1 - min(plane_results['error']):.4f}"
    )
    if plane_results["trajectories"] is not None:
        for m in plane_results["members"]:
            d = plane_results["trajectories"][str(m)]["distance"]
            print(
                f"trajectory {m}: {len(d)} snapshots, distance from the plane {d[0]:.2f} (first) … {d[-1]:.4f} (last)"
            )
    for key, p in tunnel_results["paths"].items():
        print(
            f"{key:13s} loss barrier {p['loss_barrier']:.4f}  error barrier {p['error_barrier']:.4f}  "
            f"max loss {max(p['loss']):.4f}  min accuracy {1 - max(p['error']):.4f}  "
            f"min agreement a/b {min(p['agreement_a']):.3f}/{min(p['agreement_b']):.3f}"
        )
    print(f"timings: {plane_results['settings']['timings']}")


if __name__ == "__main__":
    main()
