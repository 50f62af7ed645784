"""The README and docs/ point only at what exists: every relative link (and its #anchor), every file, config
and command-line flag they name. A renamed flag, a moved file or a deleted config fails here, naming the page.

Flags are checked where they are defined, read from the sources (not from running the programs):
`--config.<field>` against the schema (`jaxens.config.get_default_config`), the flags of a command
`python experiments/x.py ...` against that script's `add_argument("--...")` / absl `DEFINE_*("...")`, and a
flag named outside a command against every jaxens program. Commands of other tools (pip, tfds, gcloud,
tensorboard, pytest) are theirs to check.
"""

from __future__ import annotations

import glob
import os
import re
import shlex

import pytest

from jaxens import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]
# What a page may name that lives outside the repository or is made by a run.
FOREIGN_TOOLS = ("pip", "tfds", "gcloud", "tensorboard", "pytest", "jupyter", "apt-get", "ruff", "mypy")
FILE_PREFIXES = ("configs/", "experiments/", "benchmarks/", "jaxens/", "tests/", "examples/", "docs/", ".ci/")


def _read(page: str) -> str:
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[|\]\([^)]*\)", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: str) -> set[str]:
    anchors, seen = set(), {}
    in_code = False
    for line in _read(page).splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            slug = _slug(line.lstrip("#"))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def _code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", _prose(text))


def _commands(text: str) -> list[str]:
    """Shell commands: the lines of ```bash blocks (continuations joined) and inline spans that run python."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        commands += [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    commands += [s for s in _code_spans(text) if re.search(r"(^|/| )python3? ", s)]
    return [re.sub(r"\s+#.*$", "", c) for c in commands]


def _defined_flags(path: str) -> set[str]:
    source = _read(path)
    flags = set(re.findall(r"add_argument\(\s*\"--([\w-]+)\"", source))
    flags |= set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    return flags | {f"no{f}" for f in re.findall(r"DEFINE_bool\(\s*\"(\w+)\"", source)}


def _program(tokens: list[str]) -> str | None:
    """The jaxens program a command runs (a path under the repository), or None for another tool."""
    for i, token in enumerate(tokens):
        if re.search(r"(^|/)python3?$", token):
            rest = tokens[i + 1 :]
            if rest[:2] == ["-m", "jaxens.train"]:
                return "jaxens/train.py"
            if rest and rest[0].endswith(".py"):
                return rest[0]
            return None
    return None


def _config_fields() -> set[str]:
    fields = set()

    def walk(node, prefix):
        for key, value in node.items():
            path = f"{prefix}{key}"
            fields.add(path)
            if hasattr(value, "items"):
                walk(value, path + ".")

    walk(config_lib.get_default_config(), "")
    return fields


def _config_flag_problem(flag: str, fields: set[str]) -> str | None:
    name = flag[len("config.") :].split("=")[0]
    if "<" in name or name in fields:
        return None
    return f"--{flag.split('=')[0]}: no such config field"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_and_anchors_exist(page):
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(_read(page))):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline.
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else ""
        if path and not os.path.exists(resolved):
            problems.append(f"{target}: {path} does not exist")
        elif anchor and (path or page).endswith(".md"):
            linked = os.path.relpath(resolved, ROOT) if path else page
            if anchor not in _anchors(linked):
                problems.append(f"{target}: no heading #{anchor} in {linked}")
    assert not problems, f"{page}:\n" + "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_named_files_and_configs_exist(page):
    problems = []
    text = _read(page)
    for span in _code_spans(text) + re.findall(r"\S+", "\n".join(_commands(text))):
        for token in re.findall(r"[\w./-]+(?::[\w.]+)?", span):
            token = token.rstrip(".")
            if token.startswith(FILE_PREFIXES) and re.search(r"\.(py|md|ipynb|json|toml|txt)(:|$)", token):
                path = token.split(":")[0]
                if not os.path.exists(os.path.join(ROOT, path)):
                    problems.append(f"{token}: no such file")
    configs = set()
    for command in _commands(text):
        configs |= set(re.findall(r"--config=([^\s\"']+)", command))
    for value in sorted(configs):
        path, _, arg = value.partition(":")
        if "..." in path:
            continue
        try:
            config_lib.load_file(config_lib.resolve_path(path), arg or None)
        except Exception as e:  # noqa: BLE001 - any failure to load is the problem to report.
            problems.append(f"--config={value}: does not load ({type(e).__name__}: {e})")
    assert not problems, f"{page}:\n" + "\n".join(sorted(set(problems)))


@pytest.mark.parametrize("page", PAGES)
def test_command_line_flags_exist(page):
    fields = _config_fields()
    programs = {p: _defined_flags(p) for p in ["jaxens/train.py", *glob.glob("experiments/*.py", root_dir=ROOT)]}
    for folder in ("benchmarks", "tests/fixtures"):
        programs |= {p: _defined_flags(p) for p in glob.glob(f"{folder}/*.py", root_dir=ROOT)}
    anywhere = set().union(*programs.values())
    problems = []
    text = _read(page)
    in_commands = set()
    for command in _commands(text):
        try:
            tokens = shlex.split(command)
        except ValueError:
            tokens = command.split()
        program = _program(tokens)
        if program is None:
            continue
        if program not in programs:
            problems.append(f"{command}: runs {program}, which does not exist")
            continue
        for token in tokens:
            if not token.startswith("--"):
                continue
            flag = token[2:]
            in_commands.add(flag)
            if flag.startswith("config."):
                problems.append(_config_flag_problem(flag, fields))
            elif flag.split("=")[0] not in programs[program]:
                problems.append(f"{command}: {program} has no flag --{flag.split('=')[0]}")
    for span in _code_spans(text):
        if any(span.startswith(tool) or f"/{tool} " in span for tool in FOREIGN_TOOLS):
            continue
        for flag in re.findall(r"(?:^|\s|\")--([\w.<>-]+(?:=\S*)?)", span):
            if flag in in_commands:
                continue
            if flag.startswith("config."):
                problems.append(_config_flag_problem(flag, fields))
            elif flag.split("=")[0] not in anywhere:
                problems.append(f"`{span}`: no jaxens program defines --{flag.split('=')[0]}")
    problems = [p for p in problems if p]
    assert not problems, f"{page}:\n" + "\n".join(sorted(set(problems)))


def test_readme_is_short():
    lines = _read("README.md").count("\n")
    assert lines <= 200, f"README.md has {lines} lines; the details belong in docs/ (at most 200)"


def test_every_docs_page_is_linked_from_the_readme():
    readme = _read("README.md")
    missing = [p for p in PAGES[1:] if f"]({p})" not in readme]
    assert not missing, f"README.md's table of pages lacks: {missing}"
