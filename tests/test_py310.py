"""danet_edge runs on Python 3.10 (JetPack 6's Python), whatever Python runs the tests.

Two static checks over every ``.py`` under ``danet_edge/``:

* the grammar: ``ast.parse(src, feature_version=(3, 10))`` (``except*``, ``a[*b]``, PEP 695 generics...), plus,
  on Python 3.12+ whose parser accepts them whatever the feature version, f-strings that reuse their own
  quote or hold a backslash inside a replacement field (PEP 701);
* the library: names that exist only from Python 3.11 on (``tomllib``, ``typing.Self``, ``ExceptionGroup``,
  ``datetime.UTC``, ``enum.StrEnum``...), found through the module's imports and aliases.

A self-test feeds known 3.11+ snippets to the checker, so a checker that finds nothing is not mistaken
for code that is clean.
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "danet_edge"

#: Modules new in 3.11+.
NEW_MODULES = {"tomllib": "3.11", "wsgiref.types": "3.11"}

#: (module, name) pairs new in 3.11+ (``from module import name`` or ``module.name``).
NEW_NAMES: dict[tuple[str, str], str] = {
    **{("typing", n): "3.11" for n in ("Self", "LiteralString", "Never", "assert_never", "assert_type",
                                         "reveal_type", "dataclass_transform", "Required", "NotRequired",
                                         "TypeVarTuple", "Unpack", "get_overloads", "clear_overloads")},
    **{("typing", n): "3.12" for n in ("override", "TypeAliasType")},
    **{("typing", n): "3.13" for n in ("ReadOnly", "TypeIs", "NoDefault", "get_protocol_members", "is_protocol")},
    ("datetime", "UTC"): "3.11",
    **{("enum", n): "3.11" for n in ("StrEnum", "ReprEnum", "EnumCheck", "FlagBoundary", "verify", "member",
                                       "nonmember", "global_enum", "show_flag_values", "EnumType", "property")},
    **{("asyncio", n): "3.11" for n in ("TaskGroup", "timeout", "timeout_at", "Runner", "Barrier")},
    ("hashlib", "file_digest"): "3.11", ("operator", "call"): "3.11", ("contextlib", "chdir"): "3.11",
    ("math", "cbrt"): "3.11", ("math", "exp2"): "3.11", ("math", "sumprod"): "3.12", ("math", "fma"): "3.13",
    ("itertools", "batched"): "3.12", ("re", "NOFLAG"): "3.11", ("logging", "getLevelNamesMapping"): "3.11",
    ("inspect", "getmembers_static"): "3.11", ("inspect", "markcoroutinefunction"): "3.12",
    ("sys", "exception"): "3.11", ("sys", "monitoring"): "3.12", ("os.path", "splitroot"): "3.12",
    ("collections.abc", "Buffer"): "3.12", ("types", "get_original_bases"): "3.12",
    ("warnings", "deprecated"): "3.13", ("copy", "replace"): "3.13",
}

#: Builtins new in 3.11+.
NEW_BUILTINS = {"ExceptionGroup": "3.11", "BaseExceptionGroup": "3.11", "PythonFinalizationError": "3.13"}

#: Methods and keyword arguments new in 3.11+ whose names are distinctive enough to flag anywhere.
NEW_METHODS = {"add_note": "3.11 (BaseException.add_note)", "is_junction": "3.12 (Path.is_junction)",
               "from_uri": "3.13 (Path.from_uri)", "full_match": "3.13 (Path.full_match)"}
NEW_KEYWORDS = {"delete_on_close": "3.12 (NamedTemporaryFile)", "onexc": "3.12 (shutil.rmtree)",
                "walk_up": "3.12 (Path.relative_to)", "include_hidden": "3.11 (glob)"}


def _fstring_problems(src: str) -> list[tuple[int, str]]:
    """PEP 701 f-strings (3.12+ tokenizer only): the own quote or a backslash inside a replacement field."""
    if not hasattr(tokenize, "FSTRING_START"):
        return []  # 3.10 / 3.11: the parser itself refuses them
    out: list[tuple[int, str]] = []
    stack: list[str] = []  # quote of each open f-string
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.FSTRING_START:
            quote = tok.string.lstrip("rRfFbBuU")
            if stack and stack[-1][0] in quote:
                out.append((tok.start[0], "f-string nested in an f-string with the same quote (3.12+)"))
            stack.append(quote)
        elif tok.type == tokenize.FSTRING_END:
            stack.pop()
        elif stack and tok.type != tokenize.FSTRING_MIDDLE:
            if tok.type == tokenize.STRING and stack[-1][0] in tok.string.lstrip("rRfFbBuU")[:1]:
                out.append((tok.start[0], "string with the f-string's own quote inside its braces (3.12+)"))
            elif "\\" in tok.string:
                out.append((tok.start[0], "backslash inside an f-string's braces (3.12+)"))
            elif tok.type == tokenize.COMMENT:
                out.append((tok.start[0], "comment inside an f-string's braces (3.12+)"))
    return out


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def py310_problems(src: str, name: str = "<src>") -> list[str]:
    """What in ``src`` would fail on Python 3.10: ``"name:line: reason"`` strings (empty when clean)."""
    try:
        tree = ast.parse(src, filename=name, feature_version=(3, 10))
    except SyntaxError as e:
        return [f"{name}:{e.lineno}: not Python 3.10 syntax: {e.msg}"]
    problems = [f"{name}:{line}: {why}" for line, why in _fstring_problems(src)]
    aliases: dict[str, str] = {}  # local name -> module it stands for
    defined = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    defined |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in NEW_MODULES:
                    problems.append(f"{name}:{node.lineno}: import {a.name} (Python {NEW_MODULES[a.name]}+)")
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module in NEW_MODULES:
                problems.append(f"{name}:{node.lineno}: from {node.module} (Python {NEW_MODULES[node.module]}+)")
            for a in node.names:
                if (node.module, a.name) in NEW_NAMES:
                    problems.append(f"{name}:{node.lineno}: {node.module}.{a.name} "
                                    f"(Python {NEW_NAMES[node.module, a.name]}+)")
                elif f"{node.module}.{a.name}" in NEW_MODULES:
                    problems.append(f"{name}:{node.lineno}: {node.module}.{a.name} (Python 3.11+)")
                else:
                    aliases.setdefault(a.asname or a.name, f"{node.module}.{a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted:
                head, _, rest = dotted.partition(".")
                full = f"{aliases.get(head, head)}.{rest}" if rest else aliases.get(head, head)
                module, _, attr = full.rpartition(".")
                if (module, attr) in NEW_NAMES:
                    problems.append(f"{name}:{node.lineno}: {module}.{attr} (Python {NEW_NAMES[module, attr]}+)")
            if node.attr in NEW_METHODS:
                problems.append(f"{name}:{node.lineno}: .{node.attr}() (Python {NEW_METHODS[node.attr]}+)")
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS and node.id not in defined \
                and node.id not in aliases:
            problems.append(f"{name}:{node.lineno}: {node.id} (Python {NEW_BUILTINS[node.id]}+)")
        elif isinstance(node, ast.keyword) and node.arg in NEW_KEYWORDS:
            problems.append(f"{name}:{node.value.lineno}: keyword {node.arg}= (Python {NEW_KEYWORDS[node.arg]}+)")
    return sorted(set(problems))


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_python_310():
    files = _sources()
    assert len(files) > 30
    problems = [p for f in files for p in py310_problems(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert not problems, "\n".join(problems)


def test_requires_python_says_310():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in text


@pytest.mark.parametrize("snippet, words", [
    ("try:\n    pass\nexcept* ValueError:\n    pass\n", "not Python 3.10 syntax"),
    ("import tomllib\n", "tomllib"),
    ("from typing import Self\n", "typing.Self"),
    ("import typing as t\ndef f() -> t.Never: ...\n", "typing.Never"),
    ("from typing import assert_never\n", "typing.assert_never"),
    ("import datetime as _dt\nnow = _dt.datetime.now(_dt.UTC)\n", "datetime.UTC"),
    ("from datetime import UTC\n", "datetime.UTC"),
    ("import enum\nclass C(enum.StrEnum):\n    A = 'a'\n", "enum.StrEnum"),
    ("from typing import LiteralString\n", "typing.LiteralString"),
    ("raise ExceptionGroup('x', [ValueError()])\n", "ExceptionGroup"),
    ("try:\n    pass\nexcept ValueError as e:\n    e.add_note('x')\n", "add_note"),
    ("import asyncio\nasync def f():\n    async with asyncio.TaskGroup() as g: pass\n", "asyncio.TaskGroup"),
    ("import hashlib\nhashlib.file_digest(open('f', 'rb'), 'sha256')\n", "hashlib.file_digest"),
    ("import shutil\nshutil.rmtree('x', onexc=print)\n", "onexc"),
    ("def f[T](x: T) -> T:\n    return x\n", "not Python 3.10 syntax"),
    ("x = {'a': 1}\ny = f\"{x[\"a\"]}\"\n", "f-string"),
])
def test_checker_finds_311_only_code(snippet, words):
    problems = py310_problems(snippet)
    if not problems and sys.version_info < (3, 12) and "f\"{x[" in snippet:
        pytest.skip("this Python cannot even tokenize a PEP 701 f-string")
    assert problems and any(words in p for p in problems), (snippet, problems)


def test_checker_passes_310_code():
    ok = ("import datetime as _dt\nfrom typing import Any, Optional\nimport enum\n"
          "class E(str, enum.Enum):\n    A = 'a'\n"
          "def f(x: int | None = None, *, y: 'Optional[Any]' = None) -> dict[str, int]:\n"
          "    match x:\n        case None:\n            return {}\n    return {f'{x!r}': x}\n"
          "now = _dt.datetime.now(_dt.timezone.utc)\n")
    assert py310_problems(ok) == []
