"""Every public function and class of the analysis modules has a Google-style docstring that states shapes.

The public API checked is, for each module of `MODULES`:

- its `__all__` when it defines one (a submodule listed there, e.g. `jaxens.metrics.forgetting`, contributes
  its own public API by the same rule);
- otherwise every name not starting with `_` bound to a function or class defined in that module (for a
  package: in one of its submodules), so re-exported third-party objects are left out;
- for each public class, the functions, properties, static and class methods written in its own body whose
  names do not start with `_` (inherited ones, e.g. `NamedTuple._replace` or flax's `replace`, are not).

Decorators (`jax.jit`, `functools.partial`, ...) are seen through with `inspect.unwrap`.

The rules, applied to every item of that API (a failure lists every offender with every rule it breaks):

1. Docstring: present and not blank.
2. Class fields: a NamedTuple or dataclass has an `Attributes:` section with an entry for each field.
3. `Args:`: a function or method with parameters (other than `self`/`cls`) has an `Args:` section with an
   entry for each parameter. An entry is a line of the section at the indentation of its first entry, of the
   form `name: ...`, `name (type): ...` or `name_a, name_b: ...` (several parameters described together);
   `*args` may be written `args` or `*args`. A name merely mentioned inside another entry's text does not count.
4. `Returns:`: a function that returns something has a `Returns:` (or `Yields:`) section. It returns something
   when its return annotation is present and not `None`/`NoReturn`, or, without an annotation, when its own
   body (not a nested function) has a `return <value>` or a `yield`. Properties are documented like
   attributes and need only rule 1.
5. Shapes: a function with a parameter annotated with an array type (`jax.Array`, `jnp.ndarray`,
   `np.ndarray`, `ArrayLike`, `chex.Array`, `Array`), PRNG keys excepted (parameters named `key`, `rng` or
   ending in `_key`/`_rng`, whose shape says nothing), states at least one shape in its docstring. A shape is a
   bracketed list `[...]` of one or more comma-separated dimensions, or a parenthesized `(...)` of two or more
   (so a formula such as `(C − 1)` is not one); each dimension is `...`, a symbol, a number or an arithmetic
   expression of them (`·`, `*`, `×`, `+`, `-`, `−`, `/`, optionally starred: `*event`), and at least one
   symbol is an upper-case dimension letter, optionally followed by one lower-case letter, digits or an
   underscore suffix (`K`, `N`, `Nv`, `Ka`, `C`, `B`, `P`, `M`, `N_train`). Examples: `[K, N, C]`, `[..., N]`,
   `[M, B, ...]`, `(K, B, C)`, `[num_batches, B, ...]`; not shapes: `[]`, `[..., 2]`, `(x, y)`, `(C − 1)`.

Whether a docstring cites the paper's equation is left to review: no rule can tell which apply.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
import textwrap
import types

MODULES = (
    "jaxens.metrics",
    "jaxens.losses",
    "jaxens.spawn",
    "jaxens.reinit",
    "jaxens.landscape",
    "jaxens.subspace",
    "jaxens.plane",
    "jaxens.tunnel",
    "jaxens.modules",
)

SECTION_HEADERS = (
    "Args",
    "Arguments",
    "Attributes",
    "Example",
    "Examples",
    "Note",
    "Notes",
    "Raises",
    "Returns",
    "See Also",
    "Todo",
    "Warning",
    "Warnings",
    "Yields",
)
_HEADER = re.compile(r"^\s*(" + "|".join(SECTION_HEADERS) + r"):\s*$")
_ENTRY = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?:\([^)]*\))?\s*:(?:\s|$)")

ARRAY_ANNOTATION = re.compile(r"(?<![\w.])(?:jax\.Array|jnp\.ndarray|np\.ndarray|ArrayLike|chex\.Array|Array)\b")
_KEY_NAME = re.compile(r"^(?:key|rng|\w+_key|\w+_rng)$")

_SYMBOL = r"(?:[A-Z][a-z]?(?:_\w+|\d+)?|[a-z][a-z0-9_]*|\d+)"
_TERM = r"\*?" + _SYMBOL + r"(?:\s*[·*×+\-−/]\s*" + _SYMBOL + r")*"
_DIMENSION = re.compile(r"^(?:\.\.\.|" + _TERM + r")$")
_UPPER_SYMBOL = re.compile(r"(?<![A-Za-z0-9_])[A-Z][a-z]?(?:_\w+|\d+)?(?![A-Za-z0-9_])")


# ---- Collecting the public API ----


def _unwrap(obj):
    return inspect.unwrap(obj) if callable(obj) and not inspect.isclass(obj) else obj


def _defined_in(obj, module: types.ModuleType) -> bool:
    name = getattr(_unwrap(obj), "__module__", None) or ""
    is_package = hasattr(module, "__path__")
    return name == module.__name__ or (is_package and name.startswith(module.__name__ + "."))


def _public_names(module: types.ModuleType) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(_unwrap(obj)))
        and _defined_in(obj, module)
    )


def _class_members(cls) -> list[tuple[str, object]]:
    """Public functions, properties, static and class methods written in the body of `cls`."""
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, staticmethod | classmethod):
            member = member.__func__
        function = member.fget if isinstance(member, property) else _unwrap(member)
        if inspect.isfunction(function) and function.__qualname__.startswith(cls.__qualname__ + "."):
            out.append((name, member))
    return out


def public_api(module_names=MODULES) -> dict[str, object]:
    """{'module.name' or 'module.Class.method': the object} for the public API described above."""
    api: dict[str, object] = {}
    pending = list(module_names)
    seen = set()
    while pending:
        module = importlib.import_module(pending.pop(0))
        if module.__name__ in seen:
            continue
        seen.add(module.__name__)
        for name in _public_names(module):
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType):
                pending.append(obj.__name__)
            elif inspect.isclass(obj):
                api[f"{module.__name__}.{name}"] = obj
                for member_name, member in _class_members(obj):
                    api[f"{module.__name__}.{name}.{member_name}"] = member
            elif callable(obj):
                api[f"{module.__name__}.{name}"] = obj
    return api


# ---- The rules ----


def _section(doc: str, header: str) -> list[str] | None:
    """The lines of section `header` (without the header line), or None when the docstring has none."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == header + ":":
            body = []
            for following in lines[i + 1 :]:
                if _HEADER.match(following):
                    break
                body.append(following)
            return body
    return None


def section_entries(doc: str, header: str) -> set[str] | None:
    """The names the entries of a section describe (see rule 3), or None when there is no such section."""
    body = _section(doc, header)
    if body is None:
        return None
    filled = [line for line in body if line.strip()]
    if not filled:
        return set()
    indent = len(filled[0]) - len(filled[0].lstrip())
    names = set()
    for line in filled:
        match = _ENTRY.match(line[indent:]) if len(line) - len(line.lstrip()) == indent else None
        if match:
            names |= {name.strip().lstrip("*") for name in match.group(1).split(",")}
    return names


def _function_node(function) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return None
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return node
    return None


def _own_nodes(node: ast.AST):
    """The nodes of a function's body, nested functions, lambdas and classes left out."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        yield child
        yield from _own_nodes(child)


def returns_something(function) -> bool:
    """Rule 4's test: an annotation other than None/NoReturn, or else a `return <value>` or `yield`."""
    annotation = inspect.signature(function).return_annotation
    if annotation is not inspect.Signature.empty:
        text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        return text not in ("None", "NoReturn", "typing.NoReturn")
    node = _function_node(function)
    if node is None:
        return False
    return any(
        isinstance(n, ast.Yield | ast.YieldFrom)
        or (isinstance(n, ast.Return) and n.value is not None and not _is_none(n.value))
        for n in _own_nodes(node)
    )


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def has_shape(doc: str) -> bool:
    """Rule 5's test: a bracketed or parenthesized shape with an upper-case dimension letter."""
    groups = [(m, 1) for m in re.findall(r"\[([^\[\]]*)\]", doc)]
    groups += [(m, 2) for m in re.findall(r"\(([^()]*)\)", doc)]
    for content, min_items in groups:
        items = [item.strip() for item in content.split(",")]
        if len(items) < min_items or not all(_DIMENSION.match(item) for item in items):
            continue
        if any(_UPPER_SYMBOL.search(item) for item in items):
            return True
    return False


def _annotation_text(annotation) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def takes_array(function) -> bool:
    """Rule 5's trigger: a parameter, PRNG keys excepted, annotated with an array type."""
    return any(
        not _KEY_NAME.match(name) and ARRAY_ANNOTATION.search(_annotation_text(p.annotation))
        for name, p in inspect.signature(function).parameters.items()
    )


def function_problems(function, is_method: bool = False) -> list[str]:
    """Rules 1 and 3-5 for one function (a property: rule 1 only)."""
    if isinstance(function, property):
        return [] if (function.fget.__doc__ or "").strip() else ["no docstring"]
    function = _unwrap(function)
    doc = inspect.cleandoc(function.__doc__ or "")
    if not doc:
        return ["no docstring"]
    problems = []
    params = [
        name
        for i, name in enumerate(inspect.signature(function).parameters)
        if not (is_method and i == 0 and name in ("self", "cls"))
    ]
    if params:
        entries = section_entries(doc, "Args")
        if entries is None:
            problems.append(f"no Args: section (parameters {', '.join(params)})")
        else:
            missing = [name for name in params if name not in entries]
            if missing:
                problems.append(f"Args: has no entry for {', '.join(missing)}")
    if returns_something(function) and _section(doc, "Returns") is None and _section(doc, "Yields") is None:
        problems.append("no Returns: (or Yields:) section")
    if takes_array(function) and not has_shape(doc):
        problems.append("takes arrays but states no shape such as [K, N, C]")
    return problems


def _fields(cls) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return list(cls._fields)
    return []


def class_problems(cls) -> list[str]:
    """Rules 1 and 2 for one class."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    # A NamedTuple or dataclass without a docstring of its own gets a generated one: "Name(field, ...)".
    if not doc or re.fullmatch(re.escape(cls.__name__) + r"\(.*\)", doc, re.S):
        return ["no docstring"]
    fields = _fields(cls)
    if not fields:
        return []
    entries = section_entries(doc, "Attributes")
    if entries is None:
        return [f"no Attributes: section (fields {', '.join(fields)})"]
    missing = [name for name in fields if name not in entries]
    return [f"Attributes: has no entry for {', '.join(missing)}"] if missing else []


def api_problems(api: dict[str, object]) -> dict[str, list[str]]:
    out = {}
    for name, obj in api.items():
        is_method = name.count(".") > 0 and inspect.isclass(api.get(name.rpartition(".")[0]))
        problems = class_problems(obj) if inspect.isclass(obj) else function_problems(obj, is_method)
        if problems:
            out[name] = problems
    return out


# ---- Tests ----


def test_every_public_function_has_a_google_style_docstring_with_shapes():
    problems = api_problems(public_api())
    report = "\n".join(f"  {name}: {'; '.join(p)}" for name, p in sorted(problems.items()))
    assert not problems, f"{len(problems)} public functions or classes with docstring problems:\n{report}"


def test_the_public_api_is_found():
    api = public_api()
    for name in (
        "jaxens.metrics.nll",  # a package's __all__
        "jaxens.metrics.forgetting.update",  # a submodule listed in __all__
        "jaxens.metrics.streaming.compute",  # jitted
        "jaxens.metrics.forgetting.ForgettingState.num_examples",  # a property
        "jaxens.losses.modular_loss",
        "jaxens.spawn.Reinit.describe",  # a method
        "jaxens.reinit.select",
        "jaxens.landscape.recompute_batch_stats",
        "jaxens.subspace.low_rank_fit",
        "jaxens.plane.radial_plane",
        "jaxens.tunnel.init_bends",  # functools.partial(jax.jit, ...)
        "jaxens.modules.removal_curve",
    ):
        assert name in api, name
    assert not any(name.rpartition(".")[2].startswith("_") for name in api)
    assert "jaxens.landscape.FrozenDict" not in api  # imported, not defined there
    assert not any(name.startswith("jaxens.metrics.checks") for name in api)  # not in jaxens.metrics.__all__
    assert len(api) > 100


def test_the_rules_catch_what_they_describe():
    def documented(logits, labels, *, method="mean"):
        """One value per member.

        Args:
          logits: [K, N, C].
          labels, method: the labels [N] and a name.

        Returns:
          [K].
        """
        return logits

    def entry_only_mentioned(logits, labels) -> int:
        """Mean.

        Args:
          logits: [..., N, C]. labels: [N].

        Returns:
          An int.
        """
        return 0

    def no_sections(x, key):
        """Nothing but a summary."""
        return x

    def no_shape(values) -> None:
        """Shapes missing.

        Args:
          values: the values, (C − 1) of them; [..., 2] or [].
        """

    documented.__annotations__["logits"] = "jax.Array"
    no_sections.__annotations__["key"] = "jax.Array"  # A PRNG key: no shape needed.
    no_shape.__annotations__["values"] = "np.ndarray"
    assert function_problems(documented) == []
    assert function_problems(entry_only_mentioned) == ["Args: has no entry for labels"]
    assert function_problems(no_sections) == [
        "no Args: section (parameters x, key)",
        "no Returns: (or Yields:) section",
    ]
    assert function_problems(no_shape) == ["takes arrays but states no shape such as [K, N, C]"]
    assert has_shape("logits [..., N, C]") and has_shape("(K, B, C)") and has_shape("[num_batches, B, ...]")
    assert has_shape("[M, Nv, C]") and has_shape("[B, *D]") and has_shape("[K·N]")
    assert (
        not has_shape("(C − 1)") and not has_shape("[..., 2]") and not has_shape("(x, y)") and not has_shape("(Fort)")
    )

    class Fields:
        """A record.

        Attributes:
          a: one.
        """

        a: int
        b: int

    assert class_problems(dataclasses.dataclass(Fields)) == ["Attributes: has no entry for b"]
