"""The embedded default corpus: the Python standard library's own source files.

Every Python installation carries it, so demos, tests and recipes need no download. Files are
found through ``sysconfig`` and read in sorted order, so the corpus is the same on every run
of the same Python.
"""

import sysconfig
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
