"""The config reference page, rendered from the schema itself: `python -m jaxens.config_reference > docs/configs.md`.

Every field of `jaxens.config.get_default_config()` becomes one table row: its name as a command-line flag,
its default and its meaning. The meaning is the comment the schema's source gives the field (the comment lines
right above its assignment and the comment after it), so the page cannot say something the schema does not;
a group's introduction is the docstring of the helper that builds it (`_data_fields`, ...). The source is
read with `ast` and `tokenize`, nothing of it is executed beyond `get_default_config()`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import os
import tokenize
from typing import Any

import ml_collections

from jaxens import config as config_lib

COMMAND = "python -m jaxens.config_reference > docs/configs.md"
BEGIN = "<!-- Generated from jaxens/config.py: everything below this line. -->"

INTRO = f"""# Configs

<!-- This page is generated: edit jaxens/config.py or jaxens/config_reference.py, then run
     {COMMAND}
     (tests/test_config_reference.py fails when the page and the schema disagree). -->

A run is described by one `ml_collections.ConfigDict`. `jaxens/config.py` defines every field it can have,
with a default, and an experiment config starts from those defaults and changes a few of them. Pick one with
`--config`, either as a path or, once jaxens is installed, by its name alone:

```bash
python -m jaxens.train --config=configs/mnist1d_spawn.py --workdir=runs/mnist1d_spawn
python -m jaxens.train --config=mnist1d_spawn --workdir=runs/mnist1d_spawn   # the packaged copy
```

Any field can then be changed on the command line with `--config.<group>.<field>=<value>`, for example
`--config.ensemble.k=8` or `--config.optimizer.schedule=cosine`. Tuple fields take a Python tuple, quoted for
the shell: `--config.coupling.t="('1ep', '5ep')"`. The fields of the `grid` group are all tuples, one value per
group of members trained side by side in the same program, e.g. `--config.grid.seed="(0, 1, 2)"`.

The config is locked: a name that is not in the schema, such as the typo `config.ensemble.kk = 8` in a config
file or the same name given as a flag, is refused at once with a message that lists the fields of that group
(configs cannot add fields either). The values
are then checked together (`jaxens.trainer.validation`) before any data is loaded or anything is written, and
every violation is reported in one message.

## Shipped configs

The `configs/` folder holds one file per experiment, each with a `get_config()` and a docstring that gives the
command, the expected run time and the expected result:
"""


@dataclasses.dataclass(frozen=True)
class Field:
    """One leaf of the schema: `path` as in `config.optimizer.learning_rate`, its default and meaning."""

    path: str
    default: Any
    meaning: str


def _comments(source: str) -> dict[int, tuple[str, bool]]:
    """Line number → (comment text without '#', whether the line holds nothing else)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            standalone = not tok.line[: tok.start[1]].strip()
            out[tok.start[0]] = (tok.string.lstrip("#").strip(), standalone)
    return out


def _meaning(node: ast.Assign, comments: dict[int, tuple[str, bool]]) -> str:
    """The comment block right above `node` (no blank line between) and any comment on its own lines."""
    above: list[str] = []
    line = node.lineno - 1
    while line in comments and comments[line][1]:
        above.insert(0, comments[line][0])
        line -= 1
    after = [comments[n][0] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
    return " ".join(part for part in above + after if part)


def _assignments(function: ast.FunctionDef) -> list[tuple[str, ast.Assign]]:
    """(attribute, statement) for each `x.attribute = ...` directly in `function`'s body."""
    out = []
    for stmt in function.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Attribute):
            out.append((stmt.targets[0].attr, stmt))
    return out


def schema() -> list[tuple[str, str, list[Field]]]:
    """(group name, introduction, fields) per group, the top level ('') first, in the schema's order.

    Raises:
      ValueError: the parsed assignments and `get_default_config()`'s fields disagree (a field set some other
        way than `g.name = default` in its group's helper).
    """
    source = inspect.getsource(config_lib)
    comments = _comments(source)
    functions = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    defaults = config_lib.get_default_config()
    top, groups = [], []
    for name, stmt in _assignments(functions["get_default_config"]):
        value = stmt.value
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in functions:
            helper = functions[value.func.id]
            intro = (ast.get_docstring(helper) or "").partition(": ")[2]
            fields = [
                Field(f"config.{name}.{attr}", defaults[name][attr], _meaning(s, comments))
                for attr, s in _assignments(helper)
            ]
            groups.append((name, " ".join(intro.split()), fields))
        else:
            top.append(Field(f"config.{name}", defaults[name], _meaning(stmt, comments)))
    parsed = {f.path for _, _, fields in [("", "", top), *groups] for f in fields}
    if parsed != set(_leaves(defaults, "config")):
        raise ValueError(
            f"fields not parsed from jaxens/config.py: {sorted(set(_leaves(defaults, 'config')) ^ parsed)}"
        )
    return [("", "Fields at the top level of the config.", top), *groups]


def _leaves(node: ml_collections.ConfigDict, prefix: str) -> list[str]:
    out = []
    for key in node.keys():
        value = node[key]
        out += (
            _leaves(value, f"{prefix}.{key}") if isinstance(value, ml_collections.ConfigDict) else [f"{prefix}.{key}"]
        )
    return out


def allowed_values() -> dict[str, tuple[str, ...]]:
    """The names each choice field allows (for a tuple field: each of its items). Imports the registries of
    datasets and models, hence JAX; `jaxens.config` itself stays free of them."""
    from jaxens import data, models, reinit, rng

    c = config_lib
    return {
        "config.dataset": tuple(data.NAMES),
        "config.data.augment": ("auto", *data.AUGMENTATIONS),
        "config.model.name": tuple(models.MODELS),
        "config.model.norm": tuple(models.NORMS),
        "config.model.dtype": tuple(models.DTYPES),
        "config.model.shortcut": tuple(models.SHORTCUTS),
        "config.ensemble.strategy": ("auto", *c.MEMBER_STRATEGIES),
        "config.ensemble.method": c.ENSEMBLE_METHODS,
        "config.ensemble.shared_streams": tuple(rng.STREAM_IDS),
        "config.coupling.condition": c.CONDITIONS,
        "config.coupling.reinit_side": c.REINIT_SIDES,
        "config.coupling.reinit_unit": tuple(reinit.UNITS),
        "config.optimizer.name": c.OPTIMIZERS,
        "config.optimizer.schedule": c.SCHEDULES,
        "config.train.step_loop": c.STEP_LOOPS,
        "config.train.on_divergence": c.ON_DIVERGENCE,
        "config.grid.condition": c.CONDITIONS,
        "config.grid.reinit_side": c.REINIT_SIDES,
    }


def _cell(text: str) -> str:
    """`text` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def reference() -> str:
    """The Markdown reference of every field: one section per group, one table row per field."""
    allowed = allowed_values()
    lines = [BEGIN, "", "## Reference", ""]
    lines.append(
        "Every field, grouped as in the schema. The defaults are those of `get_default_config()`; `None` means "
        "unset. For the fields that take a name, the names allowed are listed after the meaning."
    )
    for group, intro, fields in schema():
        lines += ["", f"### `config.{group}`" if group else "### Top level", "", intro, ""]
        lines += ["| Field | Default | Meaning |", "| --- | --- | --- |"]
        for f in fields:
            meaning = f.meaning
            if f.path in allowed:
                meaning += " Allowed: " + ", ".join(f"`{v}`" for v in allowed[f.path]) + "."
            lines.append(f"| `--{f.path}` | `{_cell(repr(f.default))}` | {_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def shipped_configs(directory: str | None = None) -> list[tuple[str, str]]:
    """(file name, first paragraph of its docstring) for each config file in `directory` (default: configs/)."""
    directory = directory or config_lib.packaged_configs_dir()
    out = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py") and not name.startswith("_"):
            with open(os.path.join(directory, name)) as f:
                doc = ast.get_docstring(ast.parse(f.read())) or ""
            out.append((name, " ".join(doc.split("\n\n")[0].split())))
    return out


def page() -> str:
    """The whole of docs/configs.md: the introduction, the shipped configs and `reference()`."""
    configs = [f"- [`{name}`](../configs/{name}): {summary}" for name, summary in shipped_configs()]
    return INTRO + "\n" + "\n".join(configs) + "\n\n" + reference()


if __name__ == "__main__":
    print(page(), end="")
