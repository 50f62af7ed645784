"""docs/configs.md against the config schema: generated from it, naming every field and nothing else."""

from __future__ import annotations

import glob
import os
import re

import ml_collections
import pandas as pd
from conftest import REPO

from jaxens import config as config_lib
from jaxens import config_reference

PAGE = os.path.join(REPO, "docs", "configs.md")
REGENERATE = f"docs/configs.md is stale; regenerate it: {config_reference.COMMAND}"


def _page() -> str:
    with open(PAGE) as f:
        return f.read()


def _leaves() -> list[str]:
    """Every leaf field of the schema, dotted ('config.optimizer.learning_rate'), by pandas' flattening of
    its nested dict (independent of the renderer's walk)."""
    flat = pd.json_normalize(config_lib.get_default_config().to_dict(), sep=".")
    return [f"config.{column}" for column in flat.columns]


def _exists(path: str) -> bool:
    """Whether 'config.a.b' names a field or a group of the schema."""
    node = config_lib.get_default_config()
    for part in path.split(".")[1:]:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True


def test_the_page_is_generated_from_the_schema():
    page = _page()
    assert config_reference.BEGIN in page, REGENERATE
    assert page[page.index(config_reference.BEGIN) :] == config_reference.reference(), REGENERATE
    assert page == config_reference.page(), REGENERATE
    assert config_reference.COMMAND in page.split(config_reference.BEGIN)[0]


def test_every_field_has_a_row_and_every_flag_named_exists():
    page = _page()
    leaves = _leaves()
    rows = re.findall(r"^\| `--(config\.[\w.]+)` \|", page, flags=re.M)
    assert sorted(rows) == sorted(leaves), set(rows) ^ set(leaves)
    assert len(rows) == len(set(rows))
    named = {m.rstrip(".") for m in re.findall(r"--(config\.[\w.]+)", page)}
    unknown = sorted(path for path in named if not _exists(path))
    assert not unknown, f"docs/configs.md names flags the schema does not have: {unknown}"


def test_every_field_has_a_meaning():
    fields = [f for _, _, group in config_reference.schema() for f in group]
    assert len(fields) == len(_leaves())
    undocumented = [f.path for f in fields if len(f.meaning.split()) < 2]
    assert not undocumented, f"give these fields a comment in jaxens/config.py: {undocumented}"
    for row in re.findall(r"^\| `--config\..*$", _page(), flags=re.M):
        cells = re.split(r"(?<!\\)\|", row)[1:-1]
        assert len(cells) == 3 and cells[2].strip(), row


def test_every_shipped_config_is_listed():
    listed = re.findall(r"^- \[`([\w.]+)`\]\(\.\./configs/([\w.]+)\): \S", _page(), flags=re.M)
    assert all(name == target for name, target in listed), listed
    for name, _ in listed:
        assert os.path.isfile(os.path.join(REPO, "configs", name)), f"docs/configs.md lists a missing {name}"
    shipped = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.py")))
    shipped = [n for n in shipped if not n.startswith("_")]
    assert [name for name, _ in listed] == shipped, REGENERATE
