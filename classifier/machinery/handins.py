"""Students' handed-in runs: run folders or zips of them, judged against a reference one row each.

    invoke compare runs/REFERENCE submissions/
    invoke compare runs/REFERENCE alice.zip --more bob.zip --more runs/carol-run

A zip from Colab's file browser holds the run folder at its top; one from Google Drive holds it one
folder further down; a zip of the folder's contents holds manifest.json itself. Each is extracted into
a temporary folder that is removed when the run has been judged, whatever happens (an error, Ctrl-C).
A member with an absolute path or `..`, a zip larger than MAX_UNZIPPED_BYTES unpacked, a damaged
zip, and one that holds no run folder or several are refused with one line naming the zip.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterator

from classifier.config import UserError
from classifier.machinery.judge import EVIDENCE, compare_records, judge, load_finished_run

# A run folder of the lab's models is a few MiB (the weights, TensorBoard's events); a zip that unpacks to
# more is not a run, and a "zip bomb" must not fill the lecturer's disk.
MAX_UNZIPPED_BYTES = 512 * 1024 * 1024

# How deep manifest.json may lie in a zip: at its top (the folder's contents zipped), in the run folder
# (Colab's file browser), in a folder holding the run folder (Google Drive's download of a folder).
_MAX_DEPTH = 3


def is_handin_folder(path: Path) -> bool:
    """Whether `path` is a folder of handed-in runs (not itself a run): it holds a zip or a run folder."""
    return path.is_dir() and not (path / "manifest.json").exists() and bool(handins_in(path))


def handins_in(folder: Path) -> list[Path]:
    """The run folders and zips in `folder`, sorted by name."""
    return sorted(entry for entry in folder.iterdir()
                  if entry.suffix.lower() == ".zip" and entry.is_file() or (entry / "manifest.json").is_file())


@contextmanager
def opened_run(handin: Path) -> Iterator[Path]:
    """The run folder of `handin`: the folder itself, or a zip's run folder extracted into a temporary folder.

    Raises:
        UserError: a zip that is damaged, unsafe, too large, or holds no run folder or several.
    """
    if not (handin.is_file() and handin.suffix.lower() == ".zip"):
        yield handin
        return
    scratch = Path(tempfile.mkdtemp(prefix="classifier-handin-"))
    try:
        yield _extract(handin, scratch)
    except UserError as error:
        # Name the zip, not the temporary folder that is about to go.
        raise UserError(str(error).replace(str(scratch), str(handin))) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _extract(zip_path: Path, scratch: Path) -> Path:
    """Check every member of the zip, extract it into `scratch` and return the one run folder in it."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            names = [PurePosixPath(member.filename.replace("\\", "/")) for member in members]
            # An absolute path, `..` or a Windows drive ("C:") would write outside the temporary folder.
            unsafe = next((str(name) for name in names
                           if name.is_absolute() or ".." in name.parts or ":" in str(name)), None)
            if unsafe:
                raise UserError(f"{zip_path} holds {unsafe!r}, a path outside the zip's folder; refused: "
                                "zip the run folder itself (Colab: right-click the folder, Download)")
            if sum(member.file_size for member in members) > MAX_UNZIPPED_BYTES:
                raise UserError(f"{zip_path} unpacks to more than {MAX_UNZIPPED_BYTES // 2 ** 20} MiB, more "
                                "than a run folder; zip one run folder")
            archive.extractall(scratch)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as error:
        raise UserError(f"{zip_path} is not a readable zip ({error}); download it again") from None
    runs = sorted({(scratch / name).parent for name in names if name.name == "manifest.json"
                   and len(name.parts) <= _MAX_DEPTH and "__MACOSX" not in name.parts})
    if len(runs) != 1:
        found = "no run folder (no manifest.json)" if not runs else f"{len(runs)} run folders"
        raise UserError(f"{zip_path} holds {found}; zip one run folder (runs/<run name>) and hand that in")
    return runs[0]


@dataclass(frozen=True)
class Row:
    """One handed-in run judged against the reference."""

    name: str  # the folder's or zip's name
    agrees: bool | None  # IDENTICAL or WITHIN TOLERANCE; None where the hand-in was refused
    verdict: str  # "IDENTICAL", "WITHIN TOLERANCE", "DIFFERENT" or "REFUSED"
    largest: str  # the largest absolute test-metric difference, e.g. "0.0032"; "" where refused
    differs: str  # the kinds of evidence that differ, each with its first difference; where refused, why


def judge_handin(reference: tuple[dict, dict], handin: Path, tolerance: float) -> Row:
    """Judge one run folder or zip against the reference's (manifest, metrics); a bad one is a refused row."""
    try:
        with opened_run(handin) as run_dir:
            comparison = compare_records(reference, load_finished_run(run_dir))
    except UserError as error:
        return Row(handin.name, None, "REFUSED", "", str(error))
    agrees, verdict = judge(comparison, tolerance)
    differs = []
    for name in EVIDENCE:
        lines = getattr(comparison, name)
        if lines:
            differs.append(f"{name} ({lines[0]}{', ...' if len(lines) > 1 else ''})")
    return Row(handin.name, agrees, verdict.split(":")[0], f"{comparison.largest:.3g}",
               "; ".join(differs) or "nothing")


def exit_code(rows: list[Row]) -> int:
    """2 if any hand-in was refused (bad input), else 1 if any is DIFFERENT, else 0."""
    if any(row.agrees is None for row in rows):
        return 2
    return 0 if all(row.agrees for row in rows) else 1
