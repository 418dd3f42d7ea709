"""The README and docs/ against the commands they describe: the flag tables are read back from `invoke --help`.

docs/tasks.md has one section per task (`## \\`invoke TASK\\``) whose table lists
the task's flags; the README has one line per task. Both are compared with
what invoke itself prints, so a flag added to tasks.py without its line in the
docs (or a line left for a flag that is gone) fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import run_invoke

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def task_names() -> list[str]:
    result = run_invoke("--list")
    assert result.returncode == 0, result.stderr
    return re.findall(r"^  ([a-z][a-z0-9_-]*)\s", result.stdout, flags=re.M)


def help_flags(task: str) -> set[str]:
    """The long flags `invoke --help TASK` lists, without their dashes.

    A flag that is on by default shows as `--[no-]NAME`; people type `--no-NAME`, so the docs name that.
    """
    result = run_invoke("--help", task)
    assert result.returncode == 0, result.stderr
    options = result.stdout.split("Options:", 1)[1]
    return {("no-" if negated else "") + name for negated, name in
            re.findall(r"^  (?:-\w(?: \w+)?, )?--(\[no-\])?([a-z0-9-]+)", options, flags=re.M)}


def docs_sections() -> dict[str, str]:
    """{task: its section of docs/tasks.md}."""
    text = (DOCS / "tasks.md").read_text()
    parts = re.split(r"^## `invoke ([a-z0-9_-]+)`\s*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def table_flags(section: str) -> set[str]:
    """The flags in the first column of a section's table rows."""
    return set(re.findall(r"^\| `--([a-z0-9-]+)`", section, flags=re.M))


def test_every_task_has_its_section_in_docs_tasks(task_names):
    assert len(task_names) >= 10
    assert sorted(docs_sections()) == sorted(task_names)


def test_each_docs_table_lists_exactly_the_flags_invoke_help_shows(task_names):
    sections = docs_sections()
    differences = {task: {"missing in docs": sorted(help_flags(task) - table_flags(sections[task])),
                          "not a flag": sorted(table_flags(sections[task]) - help_flags(task))}
                   for task in task_names}
    assert {task: found for task, found in differences.items() if any(found.values())} == {}


def test_the_checker_reads_a_table_and_invokes_help():
    assert table_flags("| flag | default |\n|---|---|\n| `--epochs` | 5 |\n| `--model` with `--trainer torch` | x |\n") \
        == {"epochs", "model"}
    assert {"epochs", "resume", "workers", "numerics"} <= help_flags("train")


def test_readme_has_one_line_per_task(task_names):
    tasks_section = README.read_text().split("\n## Tasks\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_-]+)` \|", tasks_section, flags=re.M)
    assert sorted(rows) == sorted(task_names)


def test_readme_is_a_front_door_with_its_links():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    # The Korean student guide is linked before the first section.
    assert "docs/ko.md" in text.split("\n## ", 1)[0]
    # The two quickstart commands.
    assert "./setup.sh && .venv/bin/invoke train" in text and ".venv/bin/invoke test" in text
    for link in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]*)?\)", text):
        assert (ROOT / link).is_file(), link


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda page: page.name)
def test_docs_links_point_at_files_and_headings_that_exist(page):
    text = page.read_text()
    for target, anchor in re.findall(r"\]\(([\w./-]+\.md)(?:#([\w-]+))?\)", text):
        path = (page.parent / target).resolve()
        assert path.is_file(), target
        if anchor:
            prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
            headings = re.findall(r"^#+ (.+)$", prose, flags=re.M)
            assert anchor in {_anchor(heading) for heading in headings}, f"{target}#{anchor}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_docs_package_names_every_module():
    """docs/package.md's promise, "every module in one line": a new module must be added there."""
    text = (DOCS / "package.md").read_text()
    modules = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / "classifier").rglob("*.py")
                     if path.name != "__init__.py")
    assert len(modules) >= 30
    assert [module for module in modules if f"`{Path(module).name}`" not in text] == []
