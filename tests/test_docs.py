"""The README and docs/ against the commands and measurements they describe.

docs/tasks.md has one section per task (`## \\`invoke TASK\\``) whose table lists
the task's flags; the README has one line per task. Both are compared with
what invoke itself prints, so a flag added to tasks.py without its line in the
docs (or a line left for a flag that is gone) fails here. Each table's defaults
are compared with the task functions' own (and `Config`'s, which `invoke train`
fills in), and the names a choice flag accepts with classifier/registry.py.
Numbers the docs repeat from a measurement (image sizes, the benchmark tables)
are compared with the file in benchmarks/results/ that the measurement wrote.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

from conftest import run_invoke

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"


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
    text = (DOCS / "tasks.md").read_text(encoding="utf-8")
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


def table_rows(section: str) -> list[dict[str, str]]:
    """The rows of a section's flag table as {column name: cell}.

    "flag" is the flag without its dashes, "qualifier" what the first cell says after it (e.g. "with `--trainer
    torch`"), "last" the last cell (what the flag accepts or is for).
    """
    lines = [line for line in section.splitlines() if line.startswith("|")]
    if not lines:
        return []
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        flag = re.match(r"`--([a-z0-9-]+)`\s*(.*)", cells[0])
        if flag:
            rows.append({**dict(zip(header, cells)), "flag": flag.group(1), "qualifier": flag.group(2),
                         "last": cells[-1]})
    return rows


def task_defaults() -> dict[str, dict[str, object]]:
    """{task: {flag: default}} from tasks.py's functions, as invoke's Collection holds them.

    A default of None or "" means "decided further in", so it is replaced by what decides it: for
    `invoke train` the Config field of the same name, for a few others the constant their command uses.
    """
    from invoke import Collection

    import tasks as tasks_module
    from classifier.commands import bench
    from classifier.machinery import judge
    from classifier.config import Config

    filled_in = {("reproduce", "tolerance"): judge.DEFAULT_TOLERANCE,
                 ("compare", "tolerance"): judge.DEFAULT_TOLERANCE,
                 ("bench", "subjects"): ",".join(bench.DEFAULT_SUBJECTS)}
    config_defaults = {field.name: field.default for field in dataclasses.fields(Config)}
    collection = Collection.from_module(tasks_module)
    found = {}
    for name in collection.task_names:
        parameters = list(inspect.signature(collection[name].body).parameters.values())[1:]  # after the context
        defaults = {}
        for parameter in parameters:
            value = parameter.default
            if name == "train" and value is None:
                value = config_defaults.get(parameter.name)
            value = filled_in.get((name, parameter.name), value)
            if value is not inspect.Parameter.empty and value not in (None, ""):
                defaults[parameter.name.strip("_").replace("_", "-")] = value
        found[name] = defaults
    return found


def _first_word(cell: str) -> str:
    """A default cell's first word: the first `code span`, or the text up to a space or comma."""
    match = re.match(r"`([^`]+)`|([^\s,;(]+)", cell)
    return (match.group(1) or match.group(2)) if match else ""


def _expected_words(flag: str, value) -> set[str]:
    """How the table may write a default: on/off or true/false for a switch (`--no-NAME`: the opposite)."""
    if isinstance(value, bool):
        on = value != flag.startswith("no-")
        return {"on", "true"} if on else {"off", "false"}
    return {str(value)}


def test_each_docs_default_is_the_tasks_own():
    sections, defaults = docs_sections(), task_defaults()
    compared, wrong = 0, {}
    for task, section in sections.items():
        for row in table_rows(section):
            if row["qualifier"].startswith("with") or "default" not in row:
                continue
            name = row["flag"]
            value = defaults[task].get(name[3:] if name.startswith("no-") else name)
            if value is None:
                continue
            compared += 1
            if _first_word(row["default"]) not in _expected_words(name, value):
                wrong[f"{task} --{name}"] = (row["default"], value)
    assert wrong == {}
    assert compared >= 25  # every task's table has a default column; most flags' defaults are known here


def test_the_torch_model_default_is_the_one_config_picks():
    from classifier.config import make_config

    row = next(row for row in table_rows(docs_sections()["train"]) if row["qualifier"].startswith("with `--trainer torch`"))
    assert _first_word(row["default"]) == make_config(trainer="torch").model


def _leading_names(cell: str) -> list[str]:
    """The names a cell opens with: `a`, `b` or `c`, before the explanation."""
    match = re.match(r"((?:`[^`]+`(?:,\s*(?:or\s+)?|\s+or\s+)?)+)", cell)
    return re.findall(r"`([^`]+)`", match.group(1)) if match else []


def test_each_choice_flag_lists_the_names_the_code_accepts():
    from classifier import registry
    from classifier.machinery import measure
    from classifier.config import MAX_SEED

    accepted = {"dataset": registry.DATASETS, "model": registry.MODELS, "recipe": registry.RECIPES,
                "trainer": registry.TRAINERS + registry.TORCH_TRAINERS, "strategy": registry.STRATEGIES,
                "numerics": registry.NUMERICS, "subjects": measure.SUBJECTS}
    compared, wrong = 0, {}
    for task, section in docs_sections().items():
        for row in table_rows(section):
            names = registry.TORCH_MODELS if row["qualifier"].startswith("with `--trainer torch`") \
                else accepted.get(row["flag"])
            if names is None:
                continue
            compared += 1
            if _leading_names(row["last"]) != list(names):
                wrong[f"{task} --{row['flag']} {row['qualifier']}".strip()] = (_leading_names(row["last"]), list(names))
    assert wrong == {}
    assert compared >= 10
    seed = next(row for row in table_rows(docs_sections()["train"]) if row["flag"] == "seed")
    assert str(MAX_SEED) in seed["accepted"]


def test_the_checkers_read_defaults_and_names():
    assert _first_word("`fastest`, or `$CLASSIFIER_NUMERICS`") == "fastest" and _first_word("0.02") == "0.02"
    assert _expected_words("no-torch", True) == {"off", "false"} and _expected_words("int8", False) == {"off", "false"}
    assert _leading_names("`fit`, `tape` or `torch`: lecture 1.2 (`compile`)") == ["fit", "tape", "torch"]
    assert task_defaults()["train"]["epochs"] == 5 and task_defaults()["lab"]["port"] == 8888


def _project_text_files():
    """The project's own text files (not data, runs or environments)."""
    for top in ("README.md", "tasks.py", "setup.sh", "pyproject.toml", "docs", "classifier", "tests", "notebooks",
                "benchmarks", "docker", ".github", ".devcontainer"):
        path = ROOT / top
        for file in ([path] if path.is_file() else path.rglob("*") if path.is_dir() else []):
            if file.is_file() and file.suffix in {".md", ".py", ".sh", ".toml", ".yml", ".yaml", ".json", ".ipynb", ""}:
                yield file


def test_no_path_points_outside_the_repository():
    """A student who clones the lab has neither the lecturer's folder nor the course's clone beside it."""
    outside = [".." + "/shared", ".." + "/detlec"]  # written apart, so that this file does not match itself
    found = [f"{file.relative_to(ROOT)}: {path}" for file in _project_text_files()
             for path in outside if path in file.read_text(encoding="utf-8", errors="replace")]
    assert found == []
    # Where the course's scripts come from is said where they are used.
    assert "https://github.com/goodgodgd/detlec" in README.read_text(encoding="utf-8")
    assert "git clone https://github.com/goodgodgd/detlec" in docs_sections()["course"]
    assert "git clone https://github.com/goodgodgd/detlec" in " ".join(run_invoke("--help", "course").stdout.split())


def _measured_image_sizes() -> set[str]:
    record = json.loads((RESULTS / "image_sizes.json").read_text(encoding="utf-8"))
    sizes = set()
    for image in record["images"]:
        assert image["measured"] and image["source"] and image["machine"]
        sizes |= {f"{image['size_gb']:g}", *(f"{part:g}" for part in image.get("parts_gb", {}).values())}
    return sizes


def test_every_image_size_in_the_docs_is_the_measured_one():
    """A paragraph (or table row) that speaks of an image quotes benchmarks/results/image_sizes.json."""
    measured, quoted = _measured_image_sizes(), set()
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for paragraph in re.split(r"\n\s*\n", page.read_text(encoding="utf-8")):
            pieces = paragraph.splitlines() if paragraph.lstrip().startswith("|") else [paragraph]
            for piece in pieces:
                if re.search(r"\bimages?\b", piece):
                    quoted |= {(page.name, size) for size in re.findall(r"(\d+(?:\.\d+)?) GB", piece)}
    assert {(page, size) for page, size in quoted if size not in measured} == set()
    assert {"14.7", "3.82"} <= {size for _, size in quoted}  # the GPU and CPU images are quoted somewhere


@pytest.mark.parametrize(("page", "results"), [("speed.md", "latest.md"), ("speed.md", "gpu_time_to_accuracy.md"),
                                               ("reproducibility.md", "numerics_machines.md")])
def test_docs_quote_the_benchmark_tables_as_written(page, results):
    rows = [line.strip() for line in (RESULTS / results).read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    quoted = {line.strip() for line in (DOCS / page).read_text(encoding="utf-8").splitlines()}
    assert rows and [row for row in rows if row not in quoted] == []
