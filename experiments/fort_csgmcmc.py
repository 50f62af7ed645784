"""Fort et al. Appendix C (Fig. S5): function-space diversity of cSG-MCMC samples vs an independent ensemble.

  python experiments/fort_csgmcmc.py --out=results/fort_csgmcmc [--overwrite]
  python experiments/fort_csgmcmc.py --out=results/fort_sghmc_m09 --csgmcmc_config=configs/mnist1d_csgmcmc.py:sghmc_m09

Trains (or finishes, or reuses: a `jaxens.sweep`) two runs under OUT/runs/:

- `csgmcmc` (`csgmcmc_ARG` for a config `path:ARG`): `--csgmcmc_config` (default configs/mnist1d_csgmcmc.py,
  Zhang et al.'s cSGHMC), K chains of cyclical SG-MCMC (Zhang et al. 2020) from independent initializations.
  The samples of a chain are its weights at the ends of the last config.optimizer.samples_per_cycle epochs
  of every cycle (`jaxens.optim.sample_steps`; Zhang et al. keep 3), which the run must have snapshotted
  (config.trajectory.every).
- `ensemble`: `--ensemble_config` (default configs/mnist1d_ensemble.py) with `ensemble.k` set to the number
  of chains: K independently initialized and trained SGD members (a deep ensemble of the same size).

Predicts the test split with every sample and member and compares, over pairs of functions (f_a, f_b):

- `within_chain`: two samples of one chain (Fort et al.'s (b); S(S−1)/2 pairs per chain for S samples);
- `across_chains`: the samples of two different chains at the same sample time (independent inits, same
  method);
- `independent`: two members of the SGD ensemble (Fort et al.'s (a)).

Per pair: the disagreement (fraction of test examples whose argmax differs), the normalized disagreement
(Fort §4.3, disagreement / error of the sampled function, averaged over both choices of reference) and the
JS divergence of the pair (Σ_m KL(p_m ‖ p̄), `jaxens.metrics.js_divergence`). Reported as mean ± std over
the pairs of each group. Fort et al. found (b) significantly less diverse than (a) on CIFAR with ResNet-18.

Writes OUT/results.json (per-pair rows, per-group summaries, the samples' test errors, settings) and
OUT/fig_s5.png, atomically; an OUT that already holds them is refused unless --overwrite (the runs under
OUT/runs are reused either way; a run dir holding a different config is an error).
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import jax
import jax.numpy as jnp
import numpy as np

from jaxens import config as config_lib
from jaxens import ensemble as ensemble_lib
from jaxens import metrics, optim, run, sweep
from jaxens.workdir import write_bytes_atomic, write_json_atomic

FILES = ("results.json", "fig_s5.png")
GROUPS = ("within_chain", "across_chains", "independent")
METRICS = ("disagreement", "normalized_disagreement", "js_divergence")


def pair_metrics(logits_a: jax.Array, logits_b: jax.Array, labels: jax.Array) -> dict[str, float]:
    """Diversity of two functions from their test logits [N, C]."""
    normalized = 0.5 * (
        metrics.normalized_disagreement(logits_a, logits_b, labels)
        + metrics.normalized_disagreement(logits_b, logits_a, labels)
    )
    return {
        "disagreement": float(metrics.disagreement(logits_a, logits_b)),
        "normalized_disagreement": float(normalized),
        "js_divergence": float(metrics.js_divergence(jnp.stack([logits_a, logits_b]))),  # [2, N, C]
    }


def csgmcmc_samples(workdir: str):
    """Test logits of every sample of every chain: ([S, K, N, C], sample steps [S], labels [N]).

    Returns None (after saying why) when the run saved no usable trajectory.
    """
    try:
        from jaxens import trajectory as trajectory_lib
    except ImportError:
        print("skipping cSG-MCMC samples: this jaxens has no jaxens.trajectory (weight snapshots)", flush=True)
        return None
    r = run.restore(workdir)
    o = r.config.optimizer
    spe = r.dataset.num_train // r.config.train.batch_size
    ends = list(optim.sample_steps(r.plan.total_steps, o.cycles, o.samples_per_cycle, spe))
    saved = trajectory_lib.steps(workdir)
    missing = [s for s in ends if s not in saved]
    if missing:
        print(
            f"skipping cSG-MCMC samples: {workdir} has no weight snapshots at the sample steps {missing} "
            f"(saved: {saved}); set config.trajectory.every to a divisor of the cycle length "
            f"{optim.cycle_length(r.plan.total_steps, o.cycles)} and of the {spe} steps per epoch",
            flush=True,
        )
        return None
    traj = trajectory_lib.load(workdir, at=ends)
    predictor = ensemble_lib.Predictor(r.model, r.config.eval.batch_size, r.strategy)
    logits = []
    for s in range(len(ends)):
        pick = lambda x, s=s: jnp.asarray(x[s])  # noqa: E731  [K, ...] of sample s
        state = r.state.replace(
            params=jax.tree.map(pick, traj.params), batch_stats=jax.tree.map(pick, traj.batch_stats)
        )
        logits.append(predictor(state, r.dataset.test_x, r.dataset))  # [K, N, C]
    return jnp.stack(logits), ends, r.dataset.test_y  # [S, K, N, C]


def ensemble_members(workdir: str):
    """Test logits [K, N, C] of the members at the end of the run, and the labels [N]."""
    r = run.restore(workdir)
    predictor = ensemble_lib.Predictor(r.model, r.config.eval.batch_size, r.strategy)
    return predictor(r.state, r.dataset.test_x, r.dataset), r.dataset.test_y


def diversity_rows(samples: jax.Array | None, members: jax.Array, labels: jax.Array) -> list[dict]:
    """One row per pair of functions: {group, a, b, metrics...}; a and b name the functions.

    Args:
      samples: [S, K, N, C] cSG-MCMC samples (sample time s, chain c), or None.
      members: [M, N, C] independently trained members.
      labels: [N].
    """
    rows = []
    if samples is not None:
        num_samples, chains = samples.shape[:2]
        for c in range(chains):
            for s, t in itertools.combinations(range(num_samples), 2):
                rows.append(
                    {
                        "group": "within_chain",
                        "a": f"chain{c}/sample{s}",
                        "b": f"chain{c}/sample{t}",
                        **pair_metrics(samples[s, c], samples[t, c], labels),
                    }
                )
        for s in range(num_samples):
            for c, d in itertools.combinations(range(chains), 2):
                rows.append(
                    {
                        "group": "across_chains",
                        "a": f"chain{c}/sample{s}",
                        "b": f"chain{d}/sample{s}",
                        **pair_metrics(samples[s, c], samples[s, d], labels),
                    }
                )
    for i, j in itertools.combinations(range(members.shape[0]), 2):
        rows.append(
            {
                "group": "independent",
                "a": f"member{i}",
                "b": f"member{j}",
                **pair_metrics(members[i], members[j], labels),
            }
        )
    return rows


def summarize(rows: list[dict]) -> dict:
    """{group: {metric: {mean, std, pairs}}} over the rows of each group (std with ddof=0)."""
    out = {}
    for group in GROUPS:
        mine = [r for r in rows if r["group"] == group]
        if mine:
            out[group] = {
                m: {
                    "mean": float(np.mean([r[m] for r in mine])),
                    "std": float(np.std([r[m] for r in mine])),
                    "pairs": len(mine),
                }
                for m in METRICS
            }
    return out


def figure(summary: dict) -> bytes:
    """Fig. S5-style bars: mean ± 1σ of each metric, cSG-MCMC groups in blue, the ensemble in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"within_chain": "tab:blue", "across_chains": "lightsteelblue", "independent": "tab:red"}
    labels = {
        "within_chain": "cSG-MCMC,\nsame chain",
        "across_chains": "cSG-MCMC,\nacross chains",
        "independent": "independent\nSGD members",
    }
    groups = [g for g in GROUPS if g in summary]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.4))
    for ax, m in zip(axes, METRICS):
        means = [summary[g][m]["mean"] for g in groups]
        stds = [summary[g][m]["std"] for g in groups]
        ax.bar(range(len(groups)), means, yerr=stds, capsize=4, color=[colors[g] for g in groups])
        ax.set_xticks(range(len(groups)), [labels[g] for g in groups], fontsize=8)
        ax.set_title(m.replace("_", " "))
    fig.suptitle("Function-space diversity: cSG-MCMC samples vs independent members (Fort et al. Fig. S5)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def load_config(spec: str):
    """A config from 'path' or 'path:arg' (as --config= takes it) and its arg ('' when none)."""
    path, sep, arg = spec.rpartition(":")
    if not sep or os.sep in arg:
        return config_lib.load_file(spec), ""
    return config_lib.load_file(path, arg), arg


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for results.json, fig_s5.png and runs/")
    parser.add_argument("--csgmcmc_config", default=os.path.join(REPO, "configs", "mnist1d_csgmcmc.py"))
    parser.add_argument("--ensemble_config", default=os.path.join(REPO, "configs", "mnist1d_ensemble.py"))
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--set", action="append", default=[], help="override field=value of both configs")
    args = parser.parse_args(argv)
    existing = [f for f in FILES if os.path.exists(os.path.join(args.out, f))]
    if existing and not args.overwrite:
        raise SystemExit(f"error: {args.out} already holds {', '.join(existing)}: refusing to overwrite (--overwrite)")

    started = time.time()
    csg_config, csg_arg = load_config(args.csgmcmc_config)
    ens_config, _ = load_config(args.ensemble_config)
    try:
        for config in (csg_config, ens_config):
            config_lib.apply_overrides(config, args.set)
    except config_lib.ConfigError as e:
        raise SystemExit(f"error: --set: {e}") from None
    ens_config.ensemble.k = csg_config.ensemble.k  # The same number of independent functions.
    csg_name = f"csgmcmc_{csg_arg}" if csg_arg else "csgmcmc"
    # Both configs are validated before any training; finished runs are reused, unfinished ones resume.
    outcomes = sweep.run_all({csg_name: csg_config, "ensemble": ens_config}, os.path.join(args.out, "runs"))
    failed = [f"{o.name}: {o.status} ({o.message})" for o in outcomes.values() if o.summary is None]
    if failed:
        raise SystemExit("error: " + "; ".join(failed))
    workdirs = {"csgmcmc": outcomes[csg_name].workdir, "ensemble": outcomes["ensemble"].workdir}
    summaries = {"csgmcmc": outcomes[csg_name].summary, "ensemble": outcomes["ensemble"].summary}
    found = csgmcmc_samples(workdirs["csgmcmc"])
    samples, ends, labels = found if found is not None else (None, [], None)
    members, labels = ensemble_members(workdirs["ensemble"])
    rows = diversity_rows(samples, members, labels)
    summary = summarize(rows)
    errors = {"independent": metrics.error(members, labels).tolist()}  # [M]
    if samples is not None:
        errors["csgmcmc"] = metrics.error(samples, labels).tolist()  # [S][K]
    settings = {
        "csgmcmc_config": args.csgmcmc_config,
        "ensemble_config": args.ensemble_config,
        "temperature": csg_config.optimizer.temperature,
        "chains": csg_config.ensemble.k,
        "cycles": csg_config.optimizer.cycles,
        "samples_per_cycle": csg_config.optimizer.samples_per_cycle,
        "sample_steps": list(ends),
        "workdirs": {k: os.path.abspath(v) for k, v in workdirs.items()},
    }
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(
        os.path.join(args.out, "results.json"),
        {
            "rows": rows,
            "summary": summary,
            "test_error": errors,
            "settings": settings,
            "run_summaries": summaries,
            "seconds": time.time() - started,
        },
    )
    write_bytes_atomic(os.path.join(args.out, "fig_s5.png"), figure(summary))
    for group, values in summary.items():
        line = "  ".join(f"{m} {v['mean']:.4f} ± {v['std']:.4f}" for m, v in values.items())
        print(f"{group:14s} ({values['disagreement']['pairs']:2d} pairs)  {line}")
    for name, value in errors.items():
        print(f"test error {name}: {np.round(np.asarray(value), 4).tolist()}")
    print(f"{time.time() - started:.0f} s; wrote {args.out}/results.json and fig_s5.png")


if __name__ == "__main__":
    main()
