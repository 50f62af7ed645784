"""One run: validate → load data → init K members → train in jitted chunks → evaluate → summarize.

`train_and_evaluate(config, workdir)` is what `python -m jaxens.train` calls; tests call it directly.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from jaxens import checkpoint as checkpoint_lib
from jaxens import config as config_lib
from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import metrics
from jaxens import models
from jaxens import optim
from jaxens import progress
from jaxens import rng as rng_lib
from jaxens import workdir as workdir_lib


@functools.partial(jax.jit, static_argnames="method")
def _labelled_metrics(member_logits: jax.Array, labels: jax.Array, method: str) -> dict:
    """Per-member and ensemble error and NLL of logits [K, N, C] against labels [N]."""
    ens = metrics.ensemble_log_probs(member_logits, method)
    return {
        "member_error": metrics.error(member_logits, labels),  # [K]
        "member_nll": metrics.nll(member_logits, labels),  # [K]
        "ensemble_error": metrics.error(ens, labels),
        "ensemble_nll": metrics.nll(ens, labels),
    }


@functools.partial(jax.jit, static_argnames="method")
def _ood_metrics(member_logits: jax.Array, method: str) -> dict:
    """Mean predictive entropy and confidence on out-of-distribution inputs, logits [K, N, C]."""
    ens = metrics.ensemble_log_probs(member_logits, method)
    return {
        "member_entropy": metrics.entropy(member_logits).mean(-1),  # [K]
        "member_confidence": metrics.confidence(member_logits).mean(-1),  # [K]
        "ensemble_entropy": metrics.entropy(ens).mean(-1),
        "ensemble_confidence": metrics.confidence(ens).mean(-1),
    }


def evaluation_sets(dataset: data_lib.Dataset, extra: dict[str, data_lib.EvalSet]) -> dict[str, data_lib.EvalSet]:
    """'test', 'val' (when examples are held out) and the configured shifted and OOD sets, by name."""
    sets = {"test": data_lib.EvalSet(x=dataset.test_x, y=dataset.test_y, kind="test")}
    if dataset.val_x.shape[0]:
        sets["val"] = data_lib.EvalSet(x=dataset.val_x, y=dataset.val_y, kind="val")
    return {**sets, **extra}


def evaluate(
    predictor: ensemble_lib.Predictor,
    state: ensemble_lib.EnsembleState,
    dataset: data_lib.Dataset,
    sets: dict[str, data_lib.EvalSet],
    method: str,
) -> dict[str, dict]:
    """Metrics of every evaluation set as Python numbers: {set: {member_<m>: [K floats], ensemble_<m>: float}}.

    Inputs are normalized with the training set's statistics; each set is predicted in fixed-size batches.
    """
    out = {}
    for name, eval_set in sets.items():
        logits = predictor(state, eval_set.x, dataset)  # [K, N, C]
        if eval_set.kind == "ood":
            values = _ood_metrics(logits, method)
        else:
            values = _labelled_metrics(logits, eval_set.y, method)
        out[name] = {k: (v.tolist() if v.ndim else float(v)) for k, v in jax.device_get(values).items()}
    return out


def _records(step: int, epoch: int, train: dict, evals: dict[str, dict]) -> list[dict]:
    """Tidy rows {step, epoch, split, scope, member, metric, value} for metrics.jsonl."""
    rows = []

    def add(split, scope, member, metric, value):
        rows.append(
            dict(step=step, epoch=epoch, split=split, scope=scope, member=member, metric=metric, value=float(value))
        )

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


def _report(summary: dict) -> str:
    test = summary["test"]
    lines = [f"test error after {summary['steps']} steps ({summary['epochs']} epochs):"]
    for m, (e, n) in enumerate(zip(test["member_error"], test["member_nll"])):
        lines.append(f"  member {m}:  error {e:.4f}  nll {n:.4f}")
    lines.append(f"  mean member: error {test['mean_member_error']:.4f}")
    lines.append(f"  ensemble ({summary['ensemble_method']}): error {test['ensemble_error']:.4f}  nll {test['ensemble_nll']:.4f}")
    for name, values in summary.get("eval", {}).items():
        if "ensemble_error" in values:
            mean_member = sum(values["member_error"]) / len(values["member_error"])
            lines.append(
                f"{name}: ensemble error {values['ensemble_error']:.4f}  nll {values['ensemble_nll']:.4f}  "
                f"(mean member error {mean_member:.4f})"
            )
        else:
            lines.append(
                f"{name} (out of distribution): ensemble entropy {values['ensemble_entropy']:.4f}  "
                f"confidence {values['ensemble_confidence']:.4f}"
            )
    return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains a K-member ensemble as configured and writes its results to `workdir`.

    Rerunning on the same workdir with the same config resumes from the latest checkpoint (or, when the
    run has finished, returns its summary without training).

    Returns:
      The summary (also written to `workdir/summary.json`).

    Raises:
      ConfigError: before any compute or any write, for an invalid config or a workdir holding a
        different run.
    """
    config_lib.validate(config)
    dataset = data_lib.load(config)
    extra_sets = data_lib.load_eval_sets(config)
    resuming = workdir_lib.claim(workdir, config)
    finished = workdir_lib.read_summary(workdir)
    if finished is not None:
        logging.info("%s already holds a finished run; nothing to do.", workdir)
        print(_report(finished), flush=True)
        return finished

    started = time.time()
    dataset = dataset.to_device()
    eval_sets = jax.device_put(evaluation_sets(dataset, extra_sets))
    k = config.ensemble.k
    batch_size = config.train.batch_size
    spe = data_lib.steps_per_epoch(dataset.num_train, batch_size)
    total_steps = spe * config.train.num_epochs
    model = models.build(config.model, dataset.num_classes, dataset.input_shape)
    tx = optim.make_optimizer(config.optimizer, total_steps)
    state = ensemble_lib.init_ensemble(model, tx, rng_lib.member_streams(config.seed, k, tuple(config.ensemble.shared_streams)), dataset.input_shape)

    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), config.train.max_checkpoints)
    log = workdir_lib.MetricsLog(workdir)
    step = 0
    latest = checkpointer.latest_step() if resuming else None
    if latest is not None:
        state = checkpointer.restore(latest, state)
        step = latest
        log.truncate_after(step)
        logging.info("Resuming from the checkpoint at step %d.", step)
        print(f"resuming {workdir} from step {step}", flush=True)

    step_loop = ensemble_lib.resolve_step_loop(config.train.step_loop, models.MODELS[config.model.name].convolutional)
    train_chunk = ensemble_lib.TrainChunk(
        model,
        tx,
        batch_size,
        config.ensemble.strategy,
        step_loop,
        augment=data_lib.resolve_augment(config),
        padding=config.data.crop_padding,
    )
    predictor = ensemble_lib.Predictor(model, config.eval.batch_size, config.ensemble.strategy)
    evals = None
    bar = progress.bar(total_steps, initial=step, desc=f"train K={k}")
    while step < total_steps:
        epoch = step // spe
        orders = data_lib.epoch_orders(state.rngs.order, jnp.full((k,), epoch), dataset.num_train)  # [K, N]
        sums = None
        epoch_start = step
        while step < (epoch + 1) * spe:
            n = min(config.train.steps_per_call, (epoch + 1) * spe - step)
            state, chunk_sums = train_chunk(state, orders, dataset, n)
            sums = chunk_sums if sums is None else jax.tree.map(jnp.add, sums, chunk_sums)
            step += n
            bar.update(n)
        epochs_done = epoch + 1
        if epochs_done % config.eval.every_epochs == 0 or step == total_steps:
            train = {m: (v / (step - epoch_start)).tolist() for m, v in jax.device_get(sums).items()}
            evals = evaluate(predictor, state, dataset, eval_sets, config.ensemble.method)
            test = evals["test"]
            log.write(_records(step, epochs_done, train, evals))
            bar.set_postfix(ens_err=f"{test['ensemble_error']:.4f}", loss=f"{sum(train['loss']) / k:.3f}")
            logging.info("epoch %d: ensemble test error %.4f", epochs_done, test["ensemble_error"])
        if epochs_done % config.train.checkpoint_every_epochs == 0 or step == total_steps:
            checkpointer.save(step, state)
    bar.close()
    checkpointer.close()
    if evals is None:  # Resumed from the final checkpoint of a run killed before its summary.
        evals = evaluate(predictor, state, dataset, eval_sets, config.ensemble.method)

    test = evals.pop("test")
    test["mean_member_error"] = sum(test["member_error"]) / k
    summary = {
        "dataset": config.dataset,
        "model": config.model.name,
        "k": k,
        "ensemble_method": config.ensemble.method,
        "steps": step,
        "epochs": config.train.num_epochs,
        "test": test,
        "eval": evals,  # 'val' and the shifted / OOD sets, when configured.
        "wall_time_s": time.time() - started,
        "backend": jax.default_backend(),
    }
    workdir_lib.write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    print(_report(summary), flush=True)
    return summary
