"""Download, import and verification: a file reaches its final name only verified."""

import dataclasses
import gzip
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from classifier.config import UserError
from classifier.machinery.download import check_file, fetch, import_from, problems, verified_files
from conftest import remount_read_only, run_invoke, sha256_bytes


def _serve(dataset, source, served):
    for data_file in dataset.files:
        (served / data_file.name).write_bytes((source / data_file.name).read_bytes())


def test_fetch_downloads_verifies_and_then_stays_offline(tiny_dataset, http_root, tmp_path):
    dataset, source = tiny_dataset
    served, url, requests = http_root
    _serve(dataset, source, served)
    cache = tmp_path / "cache"
    folder = fetch(dataset, cache, mirror=url, progress=False)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(f.name for f in dataset.files)
    assert problems(dataset, cache) == []
    assert len(requests) == 4
    fetch(dataset, cache, mirror=url, progress=False)
    assert len(requests) == 4, "a verified copy must not be downloaded again"
    assert set(verified_files(dataset, cache)) == {f.name for f in dataset.files}


def test_fetch_replaces_a_damaged_cached_file(tiny_dataset, http_root, tmp_path):
    dataset, source = tiny_dataset
    served, url, requests = http_root
    _serve(dataset, source, served)
    cache = tmp_path / "cache"
    fetch(dataset, cache, mirror=url, progress=False)
    damaged = cache / "tiny" / dataset.files[0].name
    damaged.write_bytes(b"garbage")
    fetch(dataset, cache, mirror=url, progress=False)
    assert check_file(damaged, dataset.files[0]) is None
    assert len(requests) == 5


def test_html_error_page_is_refused_and_nothing_is_kept(tiny_dataset, http_root, tmp_path):
    dataset, _ = tiny_dataset
    served, url, _ = http_root
    for data_file in dataset.files:
        (served / data_file.name).write_text("<!DOCTYPE html><html><body>Quota exceeded</body></html>")
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="HTML/XML page"):
        fetch(dataset, cache, mirror=url, progress=False)
    assert [p.name for p in (cache / "tiny").iterdir() if not p.name.startswith(".lock")] == []


def test_truncated_download_is_refused(tiny_dataset, http_root, tmp_path):
    dataset, source = tiny_dataset
    served, url, _ = http_root
    _serve(dataset, source, served)
    first = dataset.files[0].name
    (served / first).write_bytes((source / first).read_bytes()[:100])
    with pytest.raises(UserError, match=r"is truncated: 100 of \d+ bytes"):
        fetch(dataset, tmp_path / "cache", mirror=url, progress=False)
    assert not (tmp_path / "cache" / "tiny" / first).exists()


def test_unreachable_server_says_so_and_names_the_two_ways_out(tiny_dataset, tmp_path):
    dataset, _ = tiny_dataset
    with pytest.raises(UserError) as caught:
        fetch(dataset, tmp_path / "cache", mirror="http://127.0.0.1:9/", progress=False)
    message = str(caught.value)
    assert message.startswith("cannot reach 127.0.0.1:9 to download train-images-idx3-ubyte.gz (offline")
    assert "--mirror URL" in message and "invoke data --dataset tiny --from PATH" in message
    assert "\n" not in message and "HTTPConnectionPool" not in message


def test_http_error_names_the_status(tiny_dataset, http_root, tmp_path):
    dataset, _ = tiny_dataset
    _, url, _ = http_root  # nothing served: 404
    with pytest.raises(UserError, match=r"failed: HTTP 404 File not found; use a classroom mirror"):
        fetch(dataset, tmp_path / "cache", mirror=url, progress=False)


def test_a_damaged_recompressed_copy_is_a_checksum_mismatch_not_truncated(tiny_dataset, tmp_path):
    """One byte flipped in a recompressed copy (like Debian's Fashion-MNIST) is not 'truncated'."""
    dataset, source = tiny_dataset
    # As Debian's copy: the published file is 24 bytes longer (gzip's file-name field).
    expected = dataclasses.replace(dataset.files[1], size=dataset.files[1].size + 24)
    repacked = bytearray((source / expected.name).read_bytes())
    repacked[len(repacked) // 2] ^= 0xFF
    damaged = tmp_path / expected.name
    damaged.write_bytes(bytes(repacked))
    why = check_file(damaged, expected)
    assert "does not match the published data (checksum" in why and "truncated" not in why
    # A copy that really is short is still called truncated.
    damaged.write_bytes((source / expected.name).read_bytes()[:-40])
    assert "is truncated" in check_file(damaged, expected)


def test_damaged_real_fashion_mnist_copy_is_a_checksum_mismatch(fashion_source, tmp_path):
    from classifier.machinery.datasets import get_dataset

    expected = get_dataset("fashion_mnist").files[1]
    data = bytearray((fashion_source / expected.name).read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged = tmp_path / expected.name
    damaged.write_bytes(bytes(data))
    why = check_file(damaged, expected)
    assert "does not match the published data (checksum" in why and "truncated" not in why, why


def test_import_from_folder_and_single_file(tiny_dataset, tmp_path):
    dataset, source = tiny_dataset
    cache = tmp_path / "cache"
    import_from(dataset, cache, source)
    assert problems(dataset, cache) == []
    # A single file is accepted by name, and replaces only its own copy.
    single = dataset.files[1]
    (cache / "tiny" / single.name).write_bytes(b"damaged")
    other = cache / "tiny" / dataset.files[0].name
    other_stat = other.stat()
    import_from(dataset, cache, source / single.name)
    assert (cache / "tiny" / single.name).read_bytes() == (source / single.name).read_bytes()
    assert other.stat().st_mtime_ns == other_stat.st_mtime_ns and other.stat().st_ino == other_stat.st_ino
    assert problems(dataset, cache) == []


def test_import_accepts_a_recompressed_copy_of_the_same_data(tiny_dataset, tmp_path):
    """Debian repacks Fashion-MNIST without gzip's file name: other bytes, same data."""
    dataset, source = tiny_dataset
    repacked = tmp_path / "repacked"
    repacked.mkdir()
    for data_file in dataset.files:
        raw = gzip.decompress((source / data_file.name).read_bytes())
        (repacked / data_file.name).write_bytes(gzip.compress(raw, compresslevel=1, mtime=12345))
    assert (repacked / dataset.files[0].name).read_bytes() != (source / dataset.files[0].name).read_bytes()
    import_from(dataset, tmp_path / "cache", repacked)
    assert problems(dataset, tmp_path / "cache") == []


def test_bad_import_leaves_the_cache_as_it_was(tiny_dataset, tmp_path):
    dataset, source = tiny_dataset
    cache = tmp_path / "cache"
    import_from(dataset, cache, source)
    before = {p.name: p.read_bytes() for p in (cache / "tiny").iterdir()}
    bad = tmp_path / "bad"
    bad.mkdir()
    for data_file in dataset.files:
        (bad / data_file.name).write_bytes((source / data_file.name).read_bytes())
    (bad / dataset.files[3].name).write_bytes(b"\x1f\x8b" + b"\x00" * 50)
    with pytest.raises(UserError, match=dataset.files[3].name):
        import_from(dataset, cache, bad)
    assert {p.name: p.read_bytes() for p in (cache / "tiny").iterdir()} == before


@pytest.mark.parametrize(
    "make_source, message",
    [
        (lambda tmp: tmp / "nope", "does not exist"),
        (lambda tmp: (tmp / "x.zip").write_bytes(b"1") and tmp / "x.zip", "'x.zip' is not a tiny file; accepted: "),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "lacks train-images-idx3-ubyte.gz"),
    ],
)
def test_import_errors_name_the_path(tiny_dataset, tmp_path, make_source, message):
    dataset, _ = tiny_dataset
    with pytest.raises(UserError, match=message):
        import_from(dataset, tmp_path / "cache", make_source(tmp_path))


def test_two_imports_at_once_leave_one_verified_copy(tiny_dataset, tmp_path):
    dataset, source = tiny_dataset
    cache = tmp_path / "cache"
    errors = []

    def run():
        try:
            import_from(dataset, cache, source)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert problems(dataset, cache) == []
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == sorted([".lock", *(f.name for f in dataset.files)])


def test_missing_data_says_how_to_get_it(tiny_dataset, tmp_path):
    dataset, _ = tiny_dataset
    with pytest.raises(UserError, match=r"run `invoke data --dataset tiny`"):
        verified_files(dataset, tmp_path / "empty-cache")


def _import_fashion(source: Path, data_dir: Path, env=None) -> subprocess.CompletedProcess:
    return run_invoke("data", "--dataset", "fashion_mnist", "--from", str(source), "--data-dir", str(data_dir), env=env)


def _sha256(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def test_a_classroom_mirror_serving_a_cache_imported_from_debian_is_accepted(fashion_source, http_root, tmp_path):
    """The lecturer imports Debian's (recompressed) files from a USB stick and serves the cache; a student downloads."""
    served, url, requests = http_root
    assert _import_fashion(fashion_source, served).returncode == 0  # the cache is served/fashion_mnist/
    student = tmp_path / "student"
    result = run_invoke("data", "--dataset", "fashion_mnist", "--mirror", url + "fashion_mnist/",
                        "--data-dir", str(student))
    assert result.returncode == 0, result.stderr
    assert "Fashion-MNIST: 4 file(s) verified" in result.stdout
    names = sorted(path.name for path in fashion_source.iterdir())
    assert sorted(requests) == sorted(f"/fashion_mnist/{name}" for name in names)
    assert {name: _sha256(student / "fashion_mnist" / name) for name in names} == {
        name: _sha256(fashion_source / name) for name in names}
    assert sorted(path.name for path in (student / "fashion_mnist").iterdir()) == [".lock", *names]


@pytest.mark.parametrize("flag, value", [
    ("--mirror", "teacher-pc:8000"),
    ("--mirror", "file:///srv/datasets"),
    ("CLASSIFIER_DATA_MIRROR", "not-a-url"),
])
def test_a_mirror_that_is_not_a_web_address_is_one_line_naming_it(tmp_path, flag, value):
    data_dir = tmp_path / "data"
    if flag == "--mirror":
        result = run_invoke("data", "--dataset", "fashion_mnist", "--mirror", value, "--data-dir", str(data_dir))
    else:
        result = run_invoke("data", "--dataset", "fashion_mnist", "--data-dir", str(data_dir), env={flag: value})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {flag} {value!r} is not a web address: a mirror URL needs http:// or https:// "
        f"(e.g. http://teacher-pc:8000/); for files on disk use invoke data --dataset fashion_mnist --from PATH")
    assert not data_dir.exists()


def test_offline_a_damaged_cached_file_is_named_before_the_unreachable_server(fashion_source, tmp_path):
    data_dir = tmp_path / "data"
    assert _import_fashion(fashion_source, data_dir).returncode == 0
    cached = data_dir / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz"
    flipped = bytearray(cached.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    cached.unlink()  # a new inode: Keras' cache entry, a hard link to the old one, stays intact
    cached.write_bytes(bytes(flipped))
    # Port 9 (discard) refuses connections: offline, whatever the machine's network.
    result = run_invoke("data", "--dataset", "fashion_mnist", "--data-dir", str(data_dir),
                        env={"CLASSIFIER_DATA_MIRROR": "http://127.0.0.1:9/"})
    assert result.returncode == 2
    message = result.stderr.strip()
    assert message.startswith(f"error: cached copy damaged: {cached} does not match the published data"), message
    assert "a fresh one cannot be downloaded: cannot reach 127.0.0.1:9" in message
    assert message.endswith("or import a copy on disk (invoke data --dataset fashion_mnist --from PATH)")
    assert "\n" not in message and cached.read_bytes() == bytes(flipped)


# Run as sitecustomize in the child: the first write to a temporary cache file is followed by a
# SIGKILL of the process itself, mid-copy, as a power cut or `kill -9` would stop `invoke data --from`.
_KILL_MID_COPY = """
import os, shutil, signal
_copy = shutil.copyfileobj
def copyfileobj(source, target, length=0):
    if ".tmp-" in str(getattr(target, "name", "")):
        target.write(source.read(1 << 20))
        target.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return _copy(source, target, length)
shutil.copyfileobj = copyfileobj
"""


def test_a_killed_import_leaves_a_temporary_file_that_doctor_reports_and_the_next_import_removes(
        fashion_source, tmp_path):
    from classifier.machinery.datasets import get_dataset
    from classifier.machinery.checks import OK, WARN, check_datasets

    prelude = tmp_path / "prelude"
    prelude.mkdir()
    (prelude / "sitecustomize.py").write_text(_KILL_MID_COPY)
    data_dir, folder = tmp_path / "data", tmp_path / "data" / "fashion_mnist"
    python_path = os.pathsep.join(filter(None, [str(prelude), os.environ.get("PYTHONPATH")]))
    killed = _import_fashion(fashion_source, data_dir, env={"PYTHONPATH": python_path})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    first = get_dataset("fashion_mnist").files[0].name
    [stale] = [path for path in folder.iterdir() if path.name != ".lock"]
    assert stale.name.startswith(".train-images-idx3-ubyte.tmp-") and stale.suffix == ".gz"
    assert stale.stat().st_size == 1 << 20 and not (folder / first).exists()

    doctor = run_invoke("doctor", "--data-dir", str(data_dir), "--runs-dir", str(tmp_path / "runs"))
    rows = [re.split(r"\s{2,}", line.strip()) for line in doctor.stdout.splitlines()]
    assert [WARN, "data fashion_mnist leftovers", f"1 temporary file(s), 1.0 MB, left by an interrupted import or "
            f"download: {stale.name}"] in rows, doctor.stdout
    assert "fix: invoke data --dataset fashion_mnist removes them" in doctor.stdout

    again = _import_fashion(fashion_source, data_dir)
    assert again.returncode == 0, again.stderr
    assert f"{stale}: removed, left by an interrupted import or download" in again.stdout
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [".lock", *(f.name for f in get_dataset("fashion_mnist").files)])
    assert [(check.name, check.status) for check in check_datasets(data_dir) if "fashion" in check.name] == [
        ("data fashion_mnist", OK)]


def test_a_verified_cache_removes_leftovers_on_the_next_invoke_data(tiny_dataset, tmp_path):
    """Leftovers beside a verified copy (a re-import killed mid-copy) go on the next download run too."""
    dataset, source = tiny_dataset
    import_from(dataset, tmp_path, source)
    # atomic_write's name for the file: .<stem>.tmp-<random><suffix>
    stale = tmp_path / "tiny" / ".train-images-idx3-ubyte.tmp-k2j4h8x1.gz"
    stale.write_bytes(b"half a copy")
    fetch(dataset, tmp_path, mirror="http://127.0.0.1:9/", progress=False)  # nothing to download
    assert not stale.exists() and problems(dataset, tmp_path) == []


def test_a_verified_read_only_shared_cache_is_usable(fashion_source, small_tmpfs):
    shared = small_tmpfs / "data"
    assert _import_fashion(fashion_source, shared).returncode == 0
    before = {path.name: _sha256(path) for path in (shared / "fashion_mnist").iterdir()}
    remount_read_only(small_tmpfs)
    result = run_invoke("data", "--dataset", "fashion_mnist", "--data-dir", str(shared))
    assert result.returncode == 0, result.stderr
    assert "Fashion-MNIST: 4 file(s) verified" in result.stdout
    assert result.stdout.count(": verified, nothing to download") == 4
    # The README's import line, run again by a student on the shared cache, has nothing to do either.
    again = _import_fashion(fashion_source, shared)
    assert again.returncode == 0, again.stderr
    assert (f"{shared / 'fashion_mnist'}: read-only, and every fashion_mnist file in it is verified; "
            f"nothing to import") in again.stdout
    assert {path.name: _sha256(path) for path in (shared / "fashion_mnist").iterdir()} == before


def test_a_keras_home_that_is_a_file_is_refused_before_the_import(fashion_source, tmp_path):
    blocker = tmp_path / "keras-home"
    blocker.write_text("not a folder")
    result = _import_fashion(fashion_source, tmp_path / "data", env={"KERAS_HOME": str(blocker)})
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: KERAS_HOME {blocker} is a file, but Keras keeps its dataset cache in "
                                     f"a folder; move the file away or point KERAS_HOME at a folder")
    assert not (tmp_path / "data").exists() and blocker.read_text() == "not a folder"


def test_sha256_of_a_file_and_of_a_gzip_files_content(tmp_path):
    """files.sha256_of (hashlib.file_digest): the one file hash of downloads, imports, course caches and wheels."""
    from classifier.machinery.files import sha256_of

    data = os.urandom(3 * (1 << 20) + 17)  # more than one read's worth
    plain, packed = tmp_path / "데이터 data.bin", tmp_path / "data.bin.gz"
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data))
    assert sha256_of(plain) == sha256_bytes(data)
    assert sha256_of(packed, gzip.open) == sha256_bytes(data) != sha256_of(packed) == sha256_bytes(packed.read_bytes())


def test_a_failed_then_cut_off_download_is_tried_again_and_verified(tiny_dataset, tmp_path, capsys):
    """A classroom network: the first request fails (HTTP 503), the second is cut off, the third is whole."""
    import http.server

    from classifier.machinery.download import DOWNLOAD_RETRIES

    dataset, source = tiny_dataset
    flaky = dataset.files[0].name
    requests = []

    class Flaky(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(source), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            attempt = requests.count(f"/{flaky}")
            if self.path == f"/{flaky}" and attempt == 1:
                self.send_error(503, "Service Unavailable")
            elif self.path == f"/{flaky}" and attempt == 2:
                body = (source / flaky).read_bytes()[:100]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cache = tmp_path / "cache"
        fetch(dataset, cache, mirror=f"http://127.0.0.1:{server.server_address[1]}/", progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert DOWNLOAD_RETRIES == 2 and requests.count(f"/{flaky}") == 3
    assert problems(dataset, cache) == [] and verified_files(dataset, cache)[flaky] == sha256_bytes((source / flaky).read_bytes())
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == sorted([".lock", *(f.name for f in dataset.files)])
    out = capsys.readouterr().out
    assert "attempt 3 of 3" in out and f"{cache / 'tiny' / flaky}: downloaded and verified" in out


def test_a_download_refused_every_time_is_the_labs_one_line(tiny_dataset, http_root, tmp_path):
    dataset, source = tiny_dataset
    served, url, requests = http_root
    _serve(dataset, source, served)
    first = dataset.files[0].name
    (served / first).write_bytes((source / first).read_bytes()[:100])
    with pytest.raises(UserError) as caught:
        fetch(dataset, tmp_path / "cache", mirror=url, progress=False)
    assert requests.count(f"/{first}") == 3  # the first attempt and pooch's two retries
    assert re.fullmatch(rf"download of {re.escape(url + first)} refused: the file is truncated: 100 of \d+ bytes.*",
                        str(caught.value))
    assert [p.name for p in (tmp_path / "cache" / "tiny").iterdir()] == [".lock"]
