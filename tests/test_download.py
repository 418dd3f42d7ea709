"""Download, import and verification: a file reaches its final name only verified."""

import gzip
import threading

import pytest

from classifier.config import UserError
from classifier.download import check_file, fetch, import_from, problems, verified_files


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


def test_unreachable_server_is_one_clear_error(tiny_dataset, tmp_path):
    dataset, _ = tiny_dataset
    with pytest.raises(UserError, match="cannot download http://127.0.0.1:9/"):
        fetch(dataset, tmp_path / "cache", mirror="http://127.0.0.1:9/", progress=False)


def test_import_from_folder_and_single_file(tiny_dataset, tmp_path):
    dataset, source = tiny_dataset
    cache = tmp_path / "cache"
    import_from(dataset, cache, source)
    assert problems(dataset, cache) == []
    # A single file is accepted by name.
    import_from(dataset, cache, source / dataset.files[1].name)


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
    leftovers = [p.name for p in (cache / "tiny").iterdir() if p.name.endswith(".part")]
    assert leftovers == []


def test_missing_data_says_how_to_get_it(tiny_dataset, tmp_path):
    dataset, _ = tiny_dataset
    with pytest.raises(UserError, match=r"run `invoke data --dataset tiny`"):
        verified_files(dataset, tmp_path / "empty-cache")
