"""`launch.py --mode=show_config`: the resolved config, one field per line, with the recipe's own comments.

A recipe documents each field where it sets it: the trailing comment of the line, continued by the
comment-only lines indented under it. Here lives the reader of those comments. The recipe file and the
`configs/` recipes it builds on (`c = default.get_config()`, `c.dino = ...` from `common.dino_config()`,
`c.compare.curate_semdedup = curate_semdedup.get_config()`) are parsed with `ast` and `tokenize`, never
executed, and every leaf of the config actually given, command-line overrides included, is printed as
`dotted.path = value  # comment` in the order the recipe set it. Only the standard library and
ml_collections are imported, so the mode answers at once, without starting JAX.
"""
from __future__ import annotations

import ast
import dataclasses
import io
import os
import pathlib
import tokenize
from collections.abc import Iterator
from typing import Any

import ml_collections

_ENTRY = "get_config"  # the function ml_collections' config_flags calls in a recipe
_MODULE = "<module>"   # the table of a file's top-level statements
# A `path = value` longer than this is left out of the comment column, not pushing every comment right.
_ALIGN_MAX = 60
# Chains of mounted recipes are a few deep; the bound only stops a recipe that mounts itself.
_MAX_DEPTH = 32


@dataclasses.dataclass(frozen=True)
class _Ref:
    """A config built elsewhere: what `function` of the recipe file `path` returns, at `subpath`."""

    path: pathlib.Path
    function: str
    subpath: str = ""


@dataclasses.dataclass
class _Table:
    """The fields one function of a recipe file sets, and the configs built elsewhere it takes in.

    `comments` maps a dotted path to its comment ("" when set without one); `mounts` lists
    (prefix, ref) pairs: the subtree at `prefix` ("" = the whole config) came from `ref`.
    """

    comments: dict[str, str] = dataclasses.field(default_factory=dict)
    mounts: list[tuple[str, _Ref]] = dataclasses.field(default_factory=list)

    def add(self, path: str, comment: str) -> None:
        # The first setting documents a field; a later override (a smoke block) only fills a gap.
        if not self.comments.get(path):
            self.comments[path] = comment


@dataclasses.dataclass
class _File:
    """One parsed recipe file: a table per top-level function (plus `_MODULE`) and its docstring."""

    tables: dict[str, _Table]
    docstring: str


class _Comments:
    """The comments of one source file by line: trailing ones and comment-only lines."""

    def __init__(self, text: str):
        self.trailing: dict[int, tuple[int, str]] = {}
        self.alone: dict[int, tuple[int, str]] = {}
        try:
            for tok in tokenize.generate_tokens(io.StringIO(text).readline):
                if tok.type == tokenize.COMMENT:
                    row, col = tok.start
                    where = self.trailing if tok.line[:col].strip() else self.alone
                    where[row] = (col, tok.string.lstrip("#").strip())
        except (tokenize.TokenError, SyntaxError):
            pass  # a file that does not tokenize to the end keeps the comments read before the fault

    def at(self, line: int, field_col: int) -> str:
        """The comment of a field whose keyword or assignment starts at (`line`, `field_col`)."""
        if line not in self.trailing:
            return ""
        parts = [self.trailing[line][1]]
        line += 1
        # Continuation lines are aligned to the block's comment column, which can sit left of a long
        # field's own comment; a comment-only line at or left of the field starts something else.
        while line in self.alone and self.alone[line][0] > field_col:
            parts.append(self.alone[line][1])
            line += 1
        return " ".join(p for p in parts if p)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _dict_items(node: ast.expr) -> list[tuple[str, ast.AST, ast.expr]] | None:
    """(key, node whose line holds the key's comment, value) of a dict(...), {...} or ConfigDict(...);
    None when `node` is not one of those."""
    if isinstance(node, ast.Dict):
        return [(k.value, k, v) for k, v in zip(node.keys, node.values)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if name != "dict" and not name.endswith("ConfigDict"):
        return None
    items = [(kw.arg, kw, kw.value) for kw in node.keywords if kw.arg is not None]
    if node.args:
        items = (_dict_items(node.args[0]) or []) + items
    return items


def _statements(body: list[ast.stmt], conditional: bool = False) -> Iterator[tuple[bool, ast.stmt]]:
    """The simple statements of `body`, each flagged when it sits under an if/for/while/try/match."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            yield from _statements(stmt.body, conditional)  # `with c.unlocked():` always runs
            continue
        blocks = [getattr(stmt, f, None) for f in ("body", "orelse", "finalbody")]
        blocks += [h.body for h in getattr(stmt, "handlers", ())]
        blocks += [case.body for case in getattr(stmt, "cases", ())]
        blocks = [b for b in blocks if isinstance(b, list)]
        if not blocks:
            yield conditional, stmt
        for block in blocks:
            yield from _statements(block, True)


def _returned_names(fn: ast.FunctionDef) -> set[str] | None:
    """The names a function returns (`return c`, `return c.lock()`): its config variables. None, so
    that any name counts, when it returns no plain name."""
    names = set()
    for node in ast.walk(fn):
        value = node.value if isinstance(node, ast.Return) else None
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute):
            value = value.func.value
        if isinstance(value, ast.Name):
            names.add(value.id)
    return names or None


class _Builder:
    """Reads the statements of one function of a recipe file into a `_Table`."""

    def __init__(self, comments: _Comments, modules: dict[str, pathlib.Path],
                 functions: dict[str, _Ref], config_names: set[str] | None):
        self.comments, self.modules, self.functions = comments, modules, functions
        self.config_names = config_names
        self.bound: dict[str, _Ref] = {}  # local names holding a config built elsewhere
        self.table = _Table()

    def run(self, body: list[ast.stmt]) -> _Table:
        # Unconditional settings first, so that an override under `if arg.smoke:` never documents a
        # field that the main body documents, wherever the block sits.
        for _, stmt in sorted(_statements(body), key=lambda s: (s[0], s[1].lineno)):
            self._statement(stmt)
        return self.table

    def _statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            self._update(stmt.value)
            return
        if isinstance(stmt, ast.Assign):
            targets, value = stmt.targets, stmt.value
        elif isinstance(stmt, ast.AnnAssign):
            targets, value = [stmt.target], stmt.value
        elif isinstance(stmt, ast.AugAssign):
            targets, value = [stmt.target], None  # `x *= scale` keeps what x was
        else:
            return
        for target in targets:
            if isinstance(target, ast.Name):
                self._bind(target.id, value)
                continue
            path = self._config_path(target)
            if path:
                self.table.add(path, self.comments.at(target.lineno, target.col_offset))
                if value is not None:
                    self._value(path, value)

    def _bind(self, name: str, value: ast.expr | None) -> None:
        ref = None if value is None else self._resolve(value)
        if ref is not None:
            self.bound[name] = ref
        if value is not None and self._is_config(name):
            self._value("", value)

    def _update(self, call: ast.Call) -> None:
        """`c.a.update(dict(...), k=v)`: the fields it sets, as if assigned."""
        if not (isinstance(call.func, ast.Attribute) and call.func.attr == "update"):
            return
        path = self._config_path(call.func.value)
        if path is None:
            return
        for arg in call.args:
            self._value(path, arg)
        self._items(path, [(kw.arg, kw, kw.value) for kw in call.keywords if kw.arg is not None])

    def _value(self, path: str, node: ast.expr) -> None:
        """Records what the value assigned at `path` sets below it: its keys, or a mount."""
        items = _dict_items(node)
        if items is None:
            ref = self._resolve(node)
            if ref is not None:
                self.table.mounts.append((path, ref))
            return
        self._items(path, items)

    def _items(self, path: str, items: list[tuple[str, ast.AST, ast.expr]]) -> None:
        for key, where, value in items:
            sub = _join(path, key)
            self.table.add(sub, self.comments.at(where.lineno, where.col_offset))
            self._value(sub, value)

    def _resolve(self, node: ast.expr) -> _Ref | None:
        """Where the config `node` evaluates to was built, when it is another recipe function's."""
        if isinstance(node, ast.Name):
            return self.bound.get(node.id)
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            key = node.attr if isinstance(node, ast.Attribute) else getattr(node.slice, "value", None)
            base = self._resolve(node.value)
            if base is None or not isinstance(key, str):
                return None
            return _Ref(base.path, base.function, _join(base.subpath, key))
        if not isinstance(node, ast.Call):
            return None
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in self.modules:
            return _Ref(self.modules[func.value.id], func.attr)
        if isinstance(func, ast.Attribute) and func.attr in ("copy", "copy_and_resolve_references", "lock",
                                                              "unlock"):
            return self._resolve(func.value)
        if isinstance(func, ast.Name):
            return self.functions.get(func.id)
        return None

    def _is_config(self, name: str) -> bool:
        return self.config_names is None or name in self.config_names

    def _config_path(self, node: ast.expr) -> str | None:
        """`c.a["b"].d` -> "a.b.d" when `c` is a config variable; None for anything else."""
        parts = []
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            key = node.attr if isinstance(node, ast.Attribute) else getattr(node.slice, "value", None)
            if not isinstance(key, str):
                return None
            parts.append(key)
            node = node.value
        if not (isinstance(node, ast.Name) and self._is_config(node.id)):
            return None
        return ".".join(reversed(parts))


def _imports(tree: ast.Module, directory: pathlib.Path) -> tuple[dict[str, pathlib.Path], dict[str, _Ref]]:
    """The sibling recipe files a recipe imports: modules by local name (`from configs import common`,
    `import configs.common as common`) and functions by local name (`from configs.common import f`)."""
    packages = ("configs", directory.name)

    def sibling(parts: list[str], level: int) -> pathlib.Path | None:
        if level == 0 and parts and parts[0] in packages:
            parts = parts[1:]
        elif level != 1:
            return None
        file = directory.joinpath(*parts).with_suffix(".py") if parts else directory
        return file if parts and file.is_file() else None

    modules, functions = {}, {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = node.module.split(".") if node.module else []
            owner = sibling(parts, node.level)
            for alias in node.names:
                local = alias.asname or alias.name
                if owner is not None:
                    functions[local] = _Ref(owner, alias.name)
                elif (file := sibling(parts + [alias.name], node.level)) is not None:
                    modules[local] = file
        elif isinstance(node, ast.Import):
            for alias in node.names:
                file = sibling(alias.name.split("."), 0)
                if file is not None and alias.asname:
                    modules[alias.asname] = file
    return modules, functions


def _parse(path: pathlib.Path) -> _File:
    """The tables of a recipe file; an unreadable or unparsable file has none."""
    try:
        text = path.read_text()
        tree = ast.parse(text)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return _File({}, "")
    comments = _Comments(text)
    modules, functions = _imports(tree, path.parent)
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    functions.update({fn.name: _Ref(path, fn.name) for fn in defs})
    tables = {_MODULE: _Builder(comments, modules, functions, None).run(tree.body)}
    for fn in defs:
        tables[fn.name] = _Builder(comments, modules, functions, _returned_names(fn)).run(fn.body)
    docstring = (ast.get_docstring(tree) or "").strip()
    return _File(tables, docstring.splitlines()[0] if docstring else "")


class _Sources:
    """The recipe files one `describe` reads, each parsed once, and the comment lookup across them."""

    def __init__(self):
        self._files: dict[pathlib.Path, _File] = {}

    def file(self, path: pathlib.Path) -> _File:
        path = path.resolve()
        if path not in self._files:
            self._files[path] = _parse(path)
        return self._files[path]

    def comment(self, ref: _Ref, path: str, depth: int = 0, origin: bool = False) -> str:
        """The comment of `path` in the config `ref` builds: its own, else that of the recipe it mounted.

        A recipe that sets a field again without a comment (`c.dino.teacher_momentum = 0.996` over
        `default.get_config()`) gets the comment of the field's definition (`origin`), not that of an
        intermediate recipe's own override ("short run: a faster teacher"), which explains another value.
        """
        table = self.file(ref.path).tables.get(ref.function)
        if table is None or depth > _MAX_DEPTH:
            return ""
        full = _join(ref.subpath, path)
        own = table.comments.get(full)
        if own and not origin:
            return own
        # The deepest mount replaced what was there; at equal depth the later assignment did.
        order = sorted(range(len(table.mounts)), key=lambda i: (-len(table.mounts[i][0]), -i))
        for prefix, mount in (table.mounts[i] for i in order):
            if prefix and full != prefix and not full.startswith(prefix + "."):
                continue
            found = self.comment(mount, full[len(prefix):].lstrip("."), depth + 1, origin or own is not None)
            if found:
                return found
        return own or ""


def _keys(node: Any) -> list[Any]:
    # ConfigDict iterates in sorted order; the order the recipe set its fields survives in `_fields`.
    fields = getattr(node, "_fields", None)
    return list(fields) if isinstance(fields, dict) else list(node.keys())


def _is_group(value: Any) -> bool:
    return isinstance(value, (ml_collections.ConfigDict, dict))


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf, depth first in insertion order; an empty group is a leaf."""
    for key in _keys(node):
        path = _join(prefix, str(key))
        try:
            value = node[key]
        except Exception as e:  # noqa: BLE001  a required placeholder raises; showing it unset is the point
            value = _Unresolved(f"<{type(e).__name__}: {e}>")
        if _is_group(value) and len(value):
            yield from _leaves(value, path)
        else:
            yield path, value


class _Unresolved(str):
    """A field that could not be read, printed as the reason, unquoted."""

    def __repr__(self) -> str:
        return str(self)


def _format(value: Any) -> str:
    """repr, kept on one line: groups inside sequences print as dict literals, not ConfigDict's YAML."""
    if _is_group(value):
        return "{" + ", ".join(f"{k!r}: {_format(value[k])}" for k in _keys(value)) + "}"
    if type(value) is tuple:
        return "(" + ", ".join(map(_format, value)) + ("," if len(value) == 1 else "") + ")"
    if type(value) is list:
        return "[" + ", ".join(map(_format, value)) + "]"
    return " ".join(repr(value).splitlines())


def _render(rows: list[tuple[str, str]]) -> list[str]:
    """`path = value` lines with their comments in one column."""
    column = max((len(left) for left, comment in rows if comment and len(left) <= _ALIGN_MAX), default=0) + 2
    lines = []
    for left, comment in rows:
        if not comment:
            lines.append(left)
        elif len(left) <= _ALIGN_MAX:
            lines.append(f"{left.ljust(column)}# {comment}")
        else:
            lines.append(f"{left}  # {comment}")
    return lines


def _recipe_path(recipe: str | os.PathLike) -> pathlib.Path:
    """The recipe file, also when given as on the command line with its argument ("x.py:smoke")."""
    text = os.fspath(recipe)
    if not os.path.isfile(text) and ".py:" in text:
        text = text[:text.index(".py:") + 3]
    return pathlib.Path(text)


def describe(config: ml_collections.ConfigDict, recipe: str | os.PathLike) -> str:
    """The resolved config, one leaf per line, each with the comment its recipe gives it.

    Args:
      config: the config the run gets, command-line overrides applied (a ConfigDict, or a dict).
      recipe: the recipe file it came from; its sibling recipes that it imports are read too. A
        `:arg` suffix is ignored. A missing file leaves every field without a comment.

    Returns:
      A header line (the recipe file and its docstring's first line), then `dotted.path = value`
      per leaf in the order the recipe set them, followed by `# comment` where the recipe has one.
    """
    path = _recipe_path(recipe)
    sources = _Sources()
    parsed = sources.file(path)
    entry = _Ref(path, _ENTRY if _ENTRY in parsed.tables else _MODULE)
    rows = [(f"{p} = {_format(v)}", sources.comment(entry, p)) for p, v in _leaves(config)]
    if not path.is_file():
        header = f"# {os.fspath(recipe)} (not found: no comments)"
    else:
        header = f"# {os.fspath(recipe)}" + (f" -- {parsed.docstring}" if parsed.docstring else "")
    return "\n".join([header, *_render(rows)])


def show_config(config: ml_collections.ConfigDict, workdir: str | os.PathLike | None, *,
                recipe: str | os.PathLike) -> str:
    """Prints `describe(config, recipe)` and returns it.

    Args:
      config: the resolved config.
      workdir: unused: it is there so that this mode has every mode's signature `(config, workdir)`;
        the recipe file, which only the launcher knows, comes as the keyword `recipe`.
      recipe: the recipe file of `config` (see `describe`).

    Returns:
      The printed text.
    """
    del workdir
    text = describe(config, recipe)
    print(text)
    return text
