"""The embedded default corpus: the Python standard library's own source files.

Every Python installation carries it, so demos, tests and recipes need no download. Files are
found through ``sysconfig`` and read in sorted order, so the corpus is the same on every run
of the same Python.
"""

import ast
import io
import re
import sysconfig
import tokenize as pytokenize
from collections.abc import Iterator
from pathlib import Path

SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib"}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files() -> list[Path]:
    """Sorted ``.py`` files of the standard library (third-party packages and tests excluded)."""
    root = stdlib_dir()
    files = [
        path
        for path in root.rglob("*.py")
        if not SKIPPED_DIRS.intersection(path.relative_to(root).parts[:-1])
    ]
    if not files:
        raise FileNotFoundError(f"no Python standard-library sources found under {root}")
    return sorted(files)


def iter_stdlib_documents() -> Iterator[tuple[str, str]]:
    """(relative path, text) for each standard-library source file."""
    root = stdlib_dir()
    for path in stdlib_source_files():
        yield str(path.relative_to(root)), path.read_text(encoding="utf-8", errors="replace")


def stdlib_text(max_chars: int) -> str:
    """The first ``max_chars`` characters of the corpus, documents joined by blank lines."""
    parts, total = [], 0
    for _, text in iter_stdlib_documents():
        parts.append(text)
        total += len(text) + 2
        if total >= max_chars:
            break
    return "\n\n".join(parts)[:max_chars]


def stdlib_prose(max_chars: int = 2_000_000) -> str:
    """Docstrings and comments of the standard library, as running text."""
    pieces, total = [], 0
    for _, source in iter_stdlib_documents():
        try:
            tree = ast.parse(source)
            docs = [
                ast.get_docstring(n)
                for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)
            ]
            comments = [
                tok.string.lstrip("#").strip()
                for tok in pytokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == pytokenize.COMMENT
            ]
        except (SyntaxError, pytokenize.TokenError, ValueError):
            continue
        for text in [d for d in docs if d] + [c for c in comments if len(c) > 20]:
            text = re.sub(r"\s+", " ", text).strip()
            pieces.append(text)
            total += len(text) + 1
        if total >= max_chars:
            break
    return " ".join(pieces)[:max_chars]
