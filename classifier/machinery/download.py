"""Getting dataset files into the cache, verified, without ever leaving a bad one.

Three ways in, one rule: a file sits under its final name in the cache only
after its SHA-256 matched the registry (for a gzip file: the SHA-256 of the
published file or of its decompressed bytes, so a recompressed copy such as
Debian's is accepted the same way from disk and from a mirror).

    invoke data --dataset cifar10                          # from the published URL
    invoke data --dataset cifar10 --mirror http://host/d/  # from a classroom mirror
    invoke data --dataset fashion_mnist --from /media/usb  # a copy already on disk

Downloads go through pooch (its known_hash and retries) into a temporary
file beside the target (files.atomic_write), renamed only when it verifies. A lock file
in the dataset folder serialises two `invoke data` started at once for the
same dataset; the temporary files a killed one left are removed by the next.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import urllib.parse
import zlib
from pathlib import Path

from classifier.config import UserError
from classifier.machinery.datasets import DataFile, Dataset
from classifier.machinery.files import atomic_write, exclusive_lock, sha256_of

_CHUNK = 1 << 20
# Attempts after the first for one file (pooch waits 1 s, then 2 s): a dropped
# connection or a cut-off file on a classroom network is usually gone by then.
DOWNLOAD_RETRIES = 2


def _content_sha256(path: Path) -> str | None:
    """SHA-256 of a gzip file's decompressed bytes, or None if it is not valid gzip."""
    try:
        return sha256_of(path, gzip.open)
    except (OSError, EOFError, zlib.error):
        return None


def check_file(path: Path, expected: DataFile) -> str | None:
    """Why `path` is not a good copy of `expected`, or None when it is."""
    return inspect_file(path, expected)[1]


def inspect_file(path: Path, expected: DataFile) -> tuple[str | None, str | None]:
    """(SHA-256 of `path`, why it is not a good copy of `expected` or None), reading the file once.

    A file is good when its SHA-256 is the published one, or, for a gzip file,
    when its decompressed bytes are (a recompressed copy of the same data).
    """
    if not path.is_file():
        return None, f"{path} is missing"
    digest = sha256_of(path)
    if digest == expected.sha256:
        return digest, None
    if expected.content_sha256:
        content = _content_sha256(path)
        if content == expected.content_sha256:
            return digest, None
        return digest, f"{path} {_diagnose(path, expected, content)}"
    return digest, f"{path} {_diagnose(path, expected)}"


def _diagnose(path: Path, expected: DataFile, content: str | None = "") -> str:
    """Name the likely cause of a checksum mismatch in words a student can act on.

    `content` is the SHA-256 of a gzip file's decompressed bytes: None when the
    gzip stream is broken, "" when the registry has no content hash to compare.
    """
    size = path.stat().st_size
    with open(path, "rb") as stream:
        head = stream.read(512).lstrip().lower()
    if head.startswith(b"<"):  # <!DOCTYPE html>, <html>, <?xml ...>: no archive starts with "<"
        return "is an HTML/XML page (an error page from the server?), not the published archive"
    mismatch = f"does not match the published data (checksum: SHA-256 {expected.sha256[:12]}..., {expected.size} bytes)"
    if content:  # A whole gzip stream, but other data inside: damaged or another file, not short.
        return f"{mismatch}; its content differs, so the copy is damaged or is another file"
    if content is None and _gzip_ends_early(path):
        return f"is truncated: {size} of {expected.size} bytes, its gzip data ends early (an interrupted download or copy?)"
    if not expected.content_sha256 and size < expected.size:
        return f"is truncated: {size} of {expected.size} bytes (an interrupted download or copy?)"
    return mismatch


def _gzip_ends_early(path: Path) -> bool:
    """Whether a gzip file stops before its stream ends (as a cut-off download does)."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(_CHUNK):
                pass
    except EOFError:
        return True
    except (OSError, zlib.error):
        return False
    return False


@contextlib.contextmanager
def _locked(folder: Path):
    """Hold an exclusive lock on the dataset folder for the duration of the block."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".lock").touch()
    except OSError as error:
        raise UserError(f"data folder {folder} cannot be written: {error.strerror}") from None
    with exclusive_lock(folder / ".lock"):
        yield


def dataset_folder(dataset: Dataset, data_dir: Path) -> Path:
    return Path(data_dir) / dataset.name


def problems(dataset: Dataset, data_dir: Path) -> list[str]:
    """Every reason the cached copy of `dataset` is not usable; empty when it is."""
    folder = dataset_folder(dataset, data_dir)
    return [why for f in dataset.files if (why := check_file(folder / f.name, f))]


def verified_files(dataset: Dataset, data_dir: Path) -> dict[str, str]:
    """{file name: SHA-256} of the cached copy, each file read once; UserError if it is not verified."""
    folder = dataset_folder(dataset, data_dir)
    hashes = {}
    for expected in dataset.files:
        digest, why = inspect_file(folder / expected.name, expected)
        if why:
            raise UserError(
                f"{dataset.name} is not ready: {why}; run `invoke data --dataset {dataset.name}` "
                f"(or `--from PATH` for a copy on disk)"
            )
        hashes[expected.name] = digest
    return hashes


def fetch(dataset: Dataset, data_dir: Path, mirror: str = "", progress: bool = True) -> Path:
    """Download every file of `dataset` that the cache lacks or holds damaged.

    A cache that already holds every file verified is only read, so a
    read-only shared cache serves as it is: a file reaches its final name
    only verified, and no lock is needed to read one.

    Args:
        dataset: the registry entry.
        data_dir: the cache root; files go to data_dir/<dataset name>/.
        mirror: a base URL that replaces the published one ("" keeps it).
        progress: show a progress bar per file.

    Returns:
        The dataset folder, every file verified.
    """
    base = _base_url(dataset, mirror)
    folder = dataset_folder(dataset, data_dir)
    if not problems(dataset, data_dir):
        for expected in dataset.files:
            print(f"{folder / expected.name}: verified, nothing to download")
        if stale_temporaries(dataset, data_dir) and os.access(folder, os.W_OK):
            with _locked(folder):
                remove_stale_temporaries(dataset, data_dir)
        return folder
    with _locked(folder):
        remove_stale_temporaries(dataset, data_dir)
        for expected in dataset.files:
            target = folder / expected.name
            # Checked again under the lock: another `invoke data` may have fetched it meanwhile.
            why = check_file(target, expected)
            if why is None:
                print(f"{target}: verified, nothing to download")
                continue
            _download(base + expected.name, target, expected, dataset.name, progress,
                      damaged=why if target.exists() else "")
            print(f"{target}: downloaded and verified")
    return folder


def _base_url(dataset: Dataset, mirror: str) -> str:
    """The URL the files are fetched from: --mirror, else $CLASSIFIER_DATA_MIRROR, else the published one."""
    given, where = (mirror, "--mirror") if mirror else (os.environ.get("CLASSIFIER_DATA_MIRROR", ""),
                                                       "CLASSIFIER_DATA_MIRROR")
    if not given:
        return dataset.base_url
    parts = urllib.parse.urlsplit(given)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"{where} {given!r} is not a web address: a mirror URL needs http:// or https:// "
                        f"(e.g. http://teacher-pc:8000/); for files on disk use "
                        f"invoke data --dataset {dataset.name} --from PATH")
    return given.rstrip("/") + "/"


def _download(url: str, target: Path, expected: DataFile, dataset_name: str, progress: bool, damaged: str) -> None:
    """Download `url` to a temporary name beside `target`, verify it as --from verifies, rename it into place.

    pooch downloads, checks the published SHA-256 (its known_hash) and tries
    again DOWNLOAD_RETRIES times after a failed or refused download, as a
    classroom network needs. The lab's own check runs inside pooch's attempt,
    for two reasons pooch's known_hash cannot serve: a recompressed gzip copy
    of the same data (Debian's, a lecturer's served cache) is accepted by the
    SHA-256 of its content, and a refused file is named in words (an HTML
    page, truncated) before pooch deletes it. `damaged` says why the cached
    copy is unusable ("" when there is none), so that a failed download does
    not hide it.
    """
    import pooch  # Imported here: only downloads need it.
    import requests

    print(f"{damaged}: downloading a fresh copy from {url}" if damaged else f"downloading {url}")
    http = pooch.HTTPDownloader(progressbar=progress, timeout=60)
    attempts = []

    def download_checked(source: str, output_file: str, fetcher) -> None:
        attempts.append(source)
        if len(attempts) > 1:
            print(f"attempt {len(attempts)} of {DOWNLOAD_RETRIES + 1}: {url}", flush=True)
        http(source, output_file, fetcher)
        if check_file(Path(output_file), expected):
            content = _content_sha256(Path(output_file)) if expected.content_sha256 else ""
            # A ValueError, as pooch's own hash mismatch: pooch tries again, then raises it.
            raise ValueError(f"download of {url} refused: the file {_diagnose(Path(output_file), expected, content)}")

    with atomic_write(target) as temporary:
        temporary.unlink()  # pooch fills a missing file; atomic_write only reserved the name
        known_hash = None if expected.content_sha256 else f"sha256:{expected.sha256}"
        fetcher = pooch.create(path=temporary.parent, base_url="", registry={temporary.name: known_hash},
                               urls={temporary.name: url}, retry_if_failed=DOWNLOAD_RETRIES)
        # pooch's own notices name the temporary file and would add lines to stderr; the attempts are printed above.
        pooch.get_logger().setLevel("WARNING")
        try:
            fetcher.fetch(temporary.name, downloader=download_checked)
        except requests.RequestException as error:  # connection refused, DNS, HTTP errors, every attempt
            cached = f"cached copy damaged: {damaged}; a fresh one cannot be downloaded: " if damaged else ""
            raise UserError(cached + _download_failure(url, error, dataset_name)) from None
        except ValueError as error:  # every attempt refused by the check above
            raise UserError(str(error)) from None


def remove_stale_temporaries(dataset: Dataset, data_dir: Path) -> list[Path]:
    """Remove the temporary files an interrupted import or download left in the dataset folder.

    Call it holding the folder's lock: every writer holds it while its
    temporary file exists, so one found then belongs to a process that died
    (a SIGKILL, a power cut).

    Returns:
        The files removed.
    """
    stale = stale_temporaries(dataset, data_dir)
    for path in stale:
        path.unlink(missing_ok=True)
        print(f"{path}: removed, left by an interrupted import or download")
    return stale


def stale_temporaries(dataset: Dataset, data_dir: Path) -> list[Path]:
    """The temporary files in the dataset folder: atomic_write's names for the dataset's files, and pooch's
    download in progress (tempfile's default name, tmp and 8 characters)."""
    folder = dataset_folder(dataset, data_dir)
    if not folder.is_dir():
        return []
    patterns = [_temporary_pattern(expected.name) for expected in dataset.files] + ["tmp????????"]
    return sorted(path for pattern in patterns for path in folder.glob(pattern))


def _temporary_pattern(name: str) -> str:
    # atomic_write's temporary name for `name`: .<stem>.tmp-<random><suffix>.
    path = Path(name)
    return f".{path.stem}.tmp-*{path.suffix}"


def _download_failure(url: str, error: OSError, dataset_name: str) -> str:
    """One line for a failed download: unreachable server (with the two ways out) or the HTTP error."""
    import requests

    ways_out = (f"use a classroom mirror (--mirror URL or CLASSIFIER_DATA_MIRROR) or import a copy on disk "
                f"(invoke data --dataset {dataset_name} --from PATH)")
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        host = urllib.parse.urlsplit(url).netloc
        return f"cannot reach {host} to download {url.rsplit('/', 1)[-1]} (offline, or the server is down); {ways_out}"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"download of {url} failed: HTTP {error.response.status_code} {error.response.reason}; {ways_out}"
    return f"download of {url} failed: {type(error).__name__}; {ways_out}"


def import_from(dataset: Dataset, data_dir: Path, source: Path) -> Path:
    """Copy `dataset`'s files from a file or folder on disk into the cache, verified.

    Every source file is checked before any is copied, so a bad copy on the
    stick leaves the cache as it was. A read-only cache that already holds
    the dataset verified is left as it is.

    Args:
        dataset: the registry entry.
        data_dir: the cache root.
        source: one of the dataset's files, or a folder holding them (searched
            one level deep as well, e.g. a folder per dataset).

    Returns:
        The dataset folder, every file verified.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"--from path {source} does not exist")
    names = [f.name for f in dataset.files]
    if source.is_file():
        if source.name not in names:
            raise UserError(f"--from file {source.name!r} is not a {dataset.name} file; accepted: {', '.join(names)}")
        found = {source.name: source}
    else:
        found = {}
        for name in names:
            candidates = [source / name, *sorted(source.glob(f"*/{name}"))]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit:
                found[name] = hit
    folder = dataset_folder(dataset, data_dir)
    if not os.access(folder, os.W_OK) and folder.is_dir() and not problems(dataset, data_dir):
        # A shared read-only cache: an import could only put the same verified data there again.
        print(f"{folder}: read-only, and every {dataset.name} file in it is verified; nothing to import")
        return folder
    with _locked(folder):
        remove_stale_temporaries(dataset, data_dir)
        for expected in dataset.files:
            if expected.name in found and (why := check_file(found[expected.name], expected)):
                raise UserError(why)
        missing = [f.name for f in dataset.files if f.name not in found and check_file(folder / f.name, f) is not None]
        if missing and source.is_dir():
            raise UserError(f"--from {source} lacks {', '.join(missing)} for {dataset.name}")
        for expected in dataset.files:
            if expected.name in found:
                _atomic_copy(found[expected.name], folder / expected.name, expected)
                print(f"{folder / expected.name}: imported from {found[expected.name]} and verified")
    if missing:
        # One file from the stick is kept; the dataset is usable once the rest arrive.
        print(f"{dataset.name} still needs {', '.join(missing)}: import them with --from as well")
    return folder


def _atomic_copy(source: Path, target: Path, expected: DataFile) -> None:
    """Copy to a temporary name in the target folder, verify, then rename over the target."""
    with atomic_write(target) as temporary:
        with open(temporary, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
        if why := check_file(temporary, expected):
            raise UserError(f"copy to {target} failed verification: {why}")
