"""What the phases of one run share: its spec, its data on the devices, the compiled step and predictor,
and where records go.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxens import data as data_lib
from jaxens import ensemble as ensemble_lib
from jaxens import rng as rng_lib
from jaxens import sharding as sharding_lib
from jaxens import tensorboard_log
from jaxens import workdir as workdir_lib
from jaxens.train_chunk import TrainChunk
from jaxens.trainer.spec import RunSpec, make_train_chunk


@dataclasses.dataclass
class RunContext:
    """One run's shared pieces (built once by `jaxens.run`; `jaxens.trainer.parents` and the callbacks use them).

    Attributes:
      spec: the resolved config.
      workdir: the run's directory.
      dataset: the data on the members' mesh (replicated, or the training split divided over it).
      eval_sets: {name: EvalSet} on the members' mesh: 'test', 'val' and the configured extra sets.
      chunk: the members' compiled training steps (the parent's phase runs the same, with K = 1).
      predictor: eval-mode logits of K members.
      log: metrics.jsonl; board: TensorBoard.
    """

    spec: RunSpec
    workdir: str
    dataset: data_lib.Dataset
    eval_sets: dict[str, data_lib.EvalSet]
    chunk: TrainChunk
    predictor: ensemble_lib.Predictor
    log: workdir_lib.MetricsLog
    board: tensorboard_log.Board

    @classmethod
    def build(cls, spec: RunSpec, workdir: str, dataset: data_lib.Dataset, extra_sets: dict) -> RunContext:
        """The context of a run: `dataset` (host arrays) and its extra evaluation sets placed on the members'
        mesh (each process transfers only to its own devices), the compiled pieces and the writers."""
        mesh = sharding_lib.make_mesh(spec.mesh_shape)
        dataset = sharding_lib.put_dataset(dataset, mesh, split_train=spec.shard_train)
        return cls(
            spec=spec,
            workdir=workdir,
            dataset=dataset,
            eval_sets=sharding_lib.put_replicated(evaluation_sets(dataset, extra_sets), mesh),
            chunk=make_train_chunk(spec),
            predictor=ensemble_lib.Predictor(spec.model, spec.eval_batch_size, spec.strategy),
            log=workdir_lib.MetricsLog(workdir, writes=sharding_lib.is_primary()),
            board=tensorboard_log.Board(workdir, spec.config),
        )

    def mesh(self, k: int) -> jax.sharding.Mesh:
        """The ('member', 'data') mesh of a phase with k members (`RunSpec.phase_mesh_shape`)."""
        return sharding_lib.make_mesh(self.spec.phase_mesh_shape(k))

    def say(self, message: str) -> None:
        """Prints a progress message (the primary process only: a multi-host run reports once)."""
        say(message)

    def record(self, rows: list[dict]) -> None:
        """Appends rows to metrics.jsonl and writes them as TensorBoard scalars."""
        self.log.write(rows)
        self.board.write(rows)

    def template(self, k: int) -> ensemble_lib.EnsembleState:
        """A k-member state's shapes, dtypes and shardings on this run's mesh, to restore checkpoints into."""
        return state_template(self.spec, k, self.mesh(k))


def say(message: str) -> None:
    """Prints a progress message from the primary process (a multi-host run reports once)."""
    if sharding_lib.is_primary():
        print(message, flush=True)


def state_template(spec: RunSpec, k: int, mesh: jax.sharding.Mesh) -> ensemble_lib.EnsembleState:
    """Shapes, dtypes and shardings (members on `mesh`) of a k-member state, to restore checkpoints into
    (whatever mesh saved them), without compute."""
    abstract = jax.eval_shape(lambda: spec.fresh_state(rng_lib.member_streams(0, k)))
    return sharding_lib.abstract_members(abstract, mesh)


def evaluation_sets(dataset: data_lib.Dataset, extra: dict[str, data_lib.EvalSet]) -> dict[str, data_lib.EvalSet]:
    """'test', 'val' (when examples are held out) and the configured shifted and OOD sets, by name."""
    sets = {"test": data_lib.EvalSet(x=dataset.test_x, y=dataset.test_y, kind="test")}
    if dataset.val_x.shape[dataset.views is not None]:  # [V, N_val, ...] with views.
        sets["val"] = data_lib.EvalSet(x=dataset.val_x, y=dataset.val_y, kind="val", per_view=dataset.views is not None)
    return {**sets, **extra}
