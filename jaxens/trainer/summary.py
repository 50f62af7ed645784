"""A run's records and summary: the tidy rows of metrics.jsonl, summary.json, and the printed report."""

from __future__ import annotations

import numpy as np

from jaxens import grid as grid_lib
from jaxens.metrics import forgetting
from jaxens.trainer.spec import RunSpec


def records(phase: str, step: int, spe: int, group: tuple, train: dict, evals: dict[str, dict]) -> list[dict]:
    """Tidy rows of one group (t, λ, grid values or None: `Plan.group_keys`) for metrics.jsonl (see
    `jaxens.workdir.MetricsLog`); a grid's rows also carry the group's grid values."""
    rows = []
    t, lam, values = (*group, None)[:3]
    base = dict(phase=phase, step=step, epoch=round(step / spe, 4), t=t, lam=lam)
    if values:
        base["grid"] = values

    def add(split, scope, member, metric, value):
        rows.append(dict(base, split=split, scope=scope, member=member, metric=metric, value=float(value)))

    for metric, values in train.items():
        for m, v in enumerate(values):
            add("train", "member", m, metric, v)
    for split, values in evals.items():
        for key, value in values.items():
            scope, metric = key.split("_", 1)
            if scope == "member":
                for m, v in enumerate(value):
                    add(split, "member", m, metric, v)
            else:
                add(split, "ensemble", None, metric, value)
    return rows


def record_key(record: dict) -> tuple:
    """The group a metrics.jsonl record belongs to, as `group_key` gives it."""
    return group_key((record["t"], record.get("lam"), record.get("grid")))


def group_key(group: tuple) -> tuple:
    """`record_key` of a `Plan.group_keys` entry."""
    t, lam, values = (*group, None)[:3]
    return t, lam, tuple(sorted((values or {}).items()))


def at_best_val(records: list[dict], group: tuple) -> dict | None:
    """Early stopping after the fact (Webb et al.): the group's ensemble test metrics at the evaluation with
    the lowest ensemble validation error (the first such), or None without a validation split."""
    key = group_key(group)
    mine = [r for r in records if r["phase"] == "members" and r["scope"] == "ensemble" and record_key(r) == key]
    val = sorted((r["value"], r["step"]) for r in mine if r["split"] == "val" and r["metric"] == "error")
    if not val:
        return None
    val_error, step = val[0]
    test = {r["metric"]: r["value"] for r in mine if r["split"] == "test" and r["step"] == step}
    epoch = next(r["epoch"] for r in mine if r["step"] == step)
    return {"step": step, "epoch": epoch, "val_error": val_error, "test_error": test["error"], "test_nll": test["nll"]}


def report(summary: dict) -> str:
    """The text report of a summary, printed at the end of a run: one block per group, or for a grid one
    table row per group (`grid_table`)."""
    if summary.get("grid"):
        return grid_table(summary)
    lines = []
    for group in summary["groups"]:
        test = group["test"]
        if group.get("lam") is not None:
            lines.append(
                f"modular loss λ={group['lam']:g}, test error after {group['steps']} steps ({summary['epochs']} epochs):"
            )
        elif group["t"] is None:
            lines.append(f"test error after {group['steps']} steps ({summary['epochs']} epochs):")
        else:
            lines.append(
                f"children spawned at t={group['t_label']} (step {group['t']}), test error at step {group['steps']}:"
            )
        diverged = group.get("diverged") or [None] * len(test["member_error"])
        for m, (e, n, d) in enumerate(zip(test["member_error"], test["member_nll"], diverged)):
            note = "" if d is None else f"  (diverged at step {d}; frozen there)"
            lines.append(f"  member {m}:  error {e:.4f}  nll {n:.4f}{note}")
        lines.append(f"  mean member: error {test['mean_member_error']:.4f}")
        healthy = sum(d is None for d in diverged)
        of = "" if healthy == len(diverged) or not healthy else f", of the {healthy} members that did not diverge"
        lines.append(
            f"  ensemble ({summary['ensemble_method']}{of}): error {test['ensemble_error']:.4f}  nll {test['ensemble_nll']:.4f}"
            f"  MACE {test['ensemble_mace']:.4f}"
        )
        if "ensemble_sym_kl" in test:
            lines.append(
                f"  diversity: symmetric KL {test['ensemble_sym_kl']:.4f}  disagreement {test['ensemble_disagreement']:.4f}"
            )
        tracked = group.get("train_forgetting")
        if tracked:
            lines.append(
                f"  train-side forgetting events per member: {', '.join(map(str, tracked['events']))}"
                f"  (examples forgotten at least once: {', '.join(map(str, tracked['forgotten_examples']))})"
            )
        best = group.get("at_best_val")
        if best:
            lines.append(
                f"  at the best validation epoch ({best['epoch']:g}): ensemble test error {best['test_error']:.4f}"
                f"  (val {best['val_error']:.4f})"
            )
        for name, values in group.get("eval", {}).items():
            if "ensemble_error" in values:
                mean_member = sum(values["member_error"]) / len(values["member_error"])
                lines.append(
                    f"  {name}: ensemble error {values['ensemble_error']:.4f}  nll {values['ensemble_nll']:.4f}  "
                    f"(mean member error {mean_member:.4f})"
                )
            else:
                lines.append(
                    f"  {name} (out of distribution): ensemble entropy {values['ensemble_entropy']:.4f}  "
                    f"confidence {values['ensemble_confidence']:.4f}"
                )
    return "\n".join(lines)


def grid_table(summary: dict) -> str:
    """A grid run's report: one row per group, its grid values, spawn time and λ, then its test metrics (and the
    test error at its best validation epoch, when a validation split is held out)."""
    groups = summary["groups"]
    names = grid_lib.ordered({name for g in groups for name in g["grid"]})
    header = [grid_lib.SHORT[n] for n in names]
    header += ["t"] * any(g["t"] is not None for g in groups) + ["lam"] * any(g["lam"] is not None for g in groups)
    header += ["steps", "ens error", "ens nll", "ens MACE", "mean member error"]
    best = any(g.get("at_best_val") for g in groups)
    header += ["error at best val"] * best
    rows = []
    for g in groups:
        test = g["test"]
        row = [grid_lib.text(g["grid"].get(n, "")) for n in names]
        row += [str(g["t_label"]) if g["t"] is not None else "-"] * ("t" in header)
        row += [grid_lib.text(g["lam"])] * ("lam" in header)
        row += [str(g["steps"]), f"{test['ensemble_error']:.4f}", f"{test['ensemble_nll']:.4f}"]
        row += [f"{test['ensemble_mace']:.4f}", f"{test['mean_member_error']:.4f}"]
        row += [f"{g['at_best_val']['test_error']:.4f}" if g.get("at_best_val") else "-"] * best
        if any(d is not None for d in g["diverged"]):
            row[-1] += "  (diverged members)"
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    title = f"{len(groups)} groups of k={summary['k']}, {summary['epochs']} epochs, test set ({summary['ensemble_method']}):"
    return "\n".join([title, line(header), *map(line, rows)])


def forgetting_counts(tracker) -> dict[str, np.ndarray]:
    """Per member, the train-side forgetting statistics of its tracker (leaves [K, N], on the host):
    'events' (forgetting events summed over examples), 'forgotten_examples' (forgotten at least once),
    'unforgettable' (learned and never forgotten), 'never_learned' (presented, never correct) and 'presented'
    (presented at least once) — each [K] (docs/definitions.md#forgetting-events)."""
    presented = np.asarray(tracker.presentations) > 0
    return {
        "events": np.asarray(forgetting.total(tracker)),
        "forgotten_examples": np.asarray(forgetting.num_forgotten(tracker)),
        "unforgettable": np.asarray(forgetting.unforgettable(tracker)).sum(-1),
        "never_learned": (presented & ~np.asarray(tracker.learned)).sum(-1),
        "presented": presented.sum(-1),
    }


def build(
    spec: RunSpec, final: dict[int, dict], diverged: np.ndarray, logged: list[dict], forgetting=None, **extra
) -> dict:
    """The run's summary (summary.json): per group of members (the children of one spawn time, one λ; a single
    group otherwise) its test and evaluation-set metrics, the early-stopping view, which members diverged and,
    when tracked, their train-side forgetting.

    Args:
      final: group → its evaluation at the last tick (`evaluation.evaluate`).
      diverged: [K] the step each member diverged at, or -1.
      logged: the records of metrics.jsonl.
      forgetting: the members' final forgetting trackers (leaves [K, N] on the host), or None.
      extra: further top-level entries (wall time, backend, mesh), after the fixed ones.
    """
    counts = None if forgetting is None else forgetting_counts(forgetting)
    plan = spec.plan
    by_group: dict[tuple, list[dict]] = {}  # The members' ensemble records per group, read once for all groups.
    for r in logged:
        if r["phase"] == "members" and r["scope"] == "ensemble":
            by_group.setdefault(record_key(r), []).append(r)
    groups = []
    for g, (group, key) in enumerate(zip(plan.groups, plan.group_keys())):
        t, lam = group.t, group.lam
        evals = dict(final[g])
        test = evals.pop("test")
        test["mean_member_error"] = sum(test["member_error"]) / plan.k
        group_diverged = [int(d) if d >= 0 else None for d in diverged[g * plan.k : (g + 1) * plan.k]]
        groups.append(
            {
                "t": t,
                "lam": lam,
                "t_label": group.t_label,
                "steps": int(plan.end_steps()[g * plan.k]),
                "test": test,
                "eval": evals,  # 'val' and the shifted / OOD sets, when configured.
                "at_best_val": at_best_val(by_group.get(group_key(key), []), key),
                # Per member: the step it diverged at (it is frozen since; the ensemble metrics leave it out), or None.
                "diverged": group_diverged,
            }
        )
        if group.values:  # A grid's group: its settings, as the run it replaces would have them.
            groups[-1]["grid"] = dict(group.values)
            groups[-1]["condition"], groups[-1]["seed"] = group.condition, group.seed
        if counts is not None:  # Per member, over the whole training (a child's since its parent's start).
            members = slice(g * plan.k, (g + 1) * plan.k)
            groups[-1]["train_forgetting"] = {name: [int(v) for v in c[members]] for name, c in counts.items()}
    summary = {
        "dataset": spec.source.name,
        "model": spec.model_name,
        "condition": plan.condition,
        "k": plan.k,
        "ensemble_method": spec.method,
        "steps": plan.total_steps,
        "epochs": spec.num_epochs,
        "groups": groups,
        **extra,
    }
    if plan.gridded:
        summary["grid"] = [name for name, _ in plan.groups[0].values]
    if len(groups) == 1:  # The common case, at the top level too.
        summary["test"], summary["eval"] = groups[0]["test"], groups[0]["eval"]
        summary["diverged"] = groups[0]["diverged"]
        if counts is not None:
            summary["train_forgetting"] = groups[0]["train_forgetting"]
    return summary
