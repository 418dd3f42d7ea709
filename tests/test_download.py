"""Download, import and verification: a file reaches its final name only verified."""

import dataclasses
import gzip
import threading

import pytest

from classifier.config import UserError
from classifier.machinery.download import check_file, fetch, import_from, problems, verified_files


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
    leftovers = [p.name for p in (cache / "tiny").iterdir() if p.name.endswith(".part")]
    assert leftovers == []


def test_missing_data_says_how_to_get_it(tiny_dataset, tmp_path):
    dataset, _ = tiny_dataset
    with pytest.raises(UserError, match=r"run `invoke data --dataset tiny`"):
        verified_files(dataset, tmp_path / "empty-cache")
