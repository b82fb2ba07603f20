"""Every ```python block of README.md and docs/*.md runs as written (issue #10 item 8).

Files are discovered when the test runs (a new docs page is covered without
editing this list). The annotation convention (separate programs, skips,
hidden setup) is in ``tests/_snippets.py``.
"""

from __future__ import annotations

import glob
import os

import pytest

import shmkit
from shmkit import _names, registry
from shmkit.testing import unique_name

from . import _snippets
from .helpers import ROOT

SHM = "/dev/shm"


def _pages() -> list[str]:
    pages = [os.path.join(ROOT, "README.md")]
    pages += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [p for p in pages if _snippets.parse(p)]


def _present() -> set[str]:
    return set(os.listdir(SHM)) if os.path.isdir(SHM) else set()


def _remove_new(path: str, before: set[str]) -> None:
    """Remove objects the page names that its run created (and nothing else)."""
    new = _present() - before
    for name in _snippets.names_in(path):
        try:
            sysname = _names.system_name(name)
        except ValueError:
            continue
        base = sysname.lstrip("/")
        if base in new:
            try:
                registry.remove(name)
            except OSError:
                pass
        if f"sem.{base}" in new:  # a plain POSIX semaphore with a verbatim name
            os.unlink(os.path.join(SHM, f"sem.{base}"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", _pages(), ids=lambda p: os.path.relpath(p, ROOT))
def test_page_snippets_run(page: str) -> None:
    before = _present()
    try:
        failures = _snippets.run_file(page)
    finally:
        _remove_new(page, before)
    assert not failures, "\n\n".join(failures)


def test_the_readme_and_every_object_page_have_snippets() -> None:
    pages = {os.path.relpath(p, ROOT) for p in _pages()}
    assert "README.md" in pages
    for page in ("objects-queue", "objects-segment", "objects-sync", "objects-broadcast"):
        assert f"docs/{page}.md" in pages, pages


def test_programs_are_separate_processes_and_keep_their_state(tmp_path: object) -> None:
    page = os.path.join(str(tmp_path), "page.md")
    with open(page, "w") as f:
        f.write(
            "\n".join(
                [
                    "```python",
                    "import os; a = os.getpid()",
                    "```",
                    "<!-- snippet: program other -->",
                    "<!-- snippet-setup",
                    "b = 2",
                    "-->",
                    "",
                    "```python",
                    "import os; assert 'a' not in dir() and b == 2; a2 = os.getpid()",
                    "```",
                    "```python",
                    "assert a == os.getpid()  # back in main, which kept `a`",
                    "```",
                    "<!-- snippet: skip not runnable -->",
                    "```python",
                    "raise SystemExit('never run')",
                    "```",
                    "```sh",
                    "not python",
                    "```",
                ]
            )
        )
    blocks = _snippets.parse(page)
    assert [(b.program, bool(b.skip), b.setup.strip()) for b in blocks] == [
        ("main", False, ""),
        ("other", False, "b = 2"),
        ("main", False, ""),
        ("main", True, ""),
    ]
    assert _snippets.run_file(page) == []


def test_a_failing_snippet_is_reported_with_its_line(tmp_path: object) -> None:
    page = os.path.join(str(tmp_path), "page.md")
    with open(page, "w") as f:
        f.write("text\n\n```python\nx = 1\n1 / 0\n```\n")
    (failure,) = _snippets.run_file(page)
    assert "page.md:3" in failure and "ZeroDivisionError" in failure


def test_a_dangling_annotation_is_an_error(tmp_path: object) -> None:
    page = os.path.join(str(tmp_path), "page.md")
    with open(page, "w") as f:
        f.write("<!-- snippet: program b -->\nsome text\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="not followed by a block"):
        _snippets.parse(page)


def test_a_page_runs_in_a_private_dev_shm_its_programs_share(tmp_path: object) -> None:
    box = _snippets.Sandbox()
    if box.proc is None:
        pytest.skip("no private /dev/shm here (needs root, unshare and nsenter)")
    box.close()
    outside = shmkit.Segment.create(unique_name("outside"), 64)
    try:
        page = os.path.join(str(tmp_path), "page.md")
        with open(page, "w") as f:
            f.write(
                "```python\nimport os, shmkit\n"
                f"assert {outside.sysname.lstrip('/')!r} not in os.listdir('/dev/shm')\n"
                "seg = shmkit.Segment.create('jobs', 64)\n```\n"
                "<!-- snippet: program b -->\n"
                "```python\nimport shmkit\nshmkit.Segment.open('jobs').close()\n```\n"
            )
        before = _present()
        assert _snippets.run_file(page) == []
        assert "shmkit.jobs" not in _present() - before  # it lived and died in the sandbox
    finally:
        outside.unlink()
        outside.close()
