"""The trainer's pieces, one concern per module; `jaxens.run` composes them into a run.

validation  every rule between config fields, checked before any compute
spec        the config resolved once into a frozen `RunSpec`
context     what the phases of one run share
loop        the phase loop: lockstep ticks, chunks of steps, callbacks at its pauses
callbacks   training-metric windows, evaluation, snapshots, divergence checks, checkpoints
parents     a spawning condition's parent: found, restored or trained, then spawned
evaluation  every group's metrics on every evaluation set
summary     metrics.jsonl records, summary.json and the printed report
restore     a run's members after training
"""
