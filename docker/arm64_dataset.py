"""The arm64 check's small Fashion-MNIST: the first images of the real files, for runs under QEMU.

    python docker/arm64_dataset.py build /usr/share/datasets/fashion-mnist WORK/source
    python docker/arm64_dataset.py invoke WORK/source/dataset.json train --dataset fashion_mnist_check ...

Under QEMU user emulation TensorFlow computes about 500 times slower than
natively (the evaluation of one run on the 10,000 test images took 2,568 s),
so docker/arm64-check.sh evaluates on the first TEST_IMAGES test images.
`build` reads Debian's Fashion-MNIST files, verifies them against the lab's
registry (the same check `invoke data --from` makes), and writes the first
TRAIN_IMAGES training and TEST_IMAGES test images with their labels as gzip
IDX files in the published format, with dataset.json: their SHA-256 and
sizes, the registry entry of a dataset named `fashion_mnist_check`. With
`--limit 600` a run trains on the same 600 images as on the full dataset.

`invoke` runs the lab's own command line (tasks.py, in this process) with
that entry registered beside the lab's datasets, as tests/conftest.py's
`registered` does for the tests' made-up datasets: `invoke data --from`
then imports and verifies the files against it, and every run records
their hashes. The lab's registry and its checks stay as they are for users.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import sys
from pathlib import Path

TRAIN_IMAGES = 600  # --limit 600: the check's runs train on these
TEST_IMAGES = 200  # evaluation under QEMU costs about 0.25 s an image
NAME = "fashion_mnist_check"


def _idx_prefix(data: bytes, count: int) -> bytes:
    """The first `count` items of an IDX file (magic, big-endian dimensions, uint8 data)."""
    dimensions = data[3]
    shape = [int.from_bytes(data[4 + 4 * axis:8 + 4 * axis], "big") for axis in range(dimensions)]
    if count > shape[0]:
        raise SystemExit(f"error: the file holds {shape[0]} items, fewer than the {count} asked for")
    item = 1
    for size in shape[1:]:
        item *= size
    header = data[:4] + count.to_bytes(4, "big") + data[8:4 + 4 * dimensions]
    start = 4 + 4 * dimensions
    return header + data[start:start + count * item]


def build(source: Path, destination: Path) -> Path:
    """Write the small dataset's four files and dataset.json into `destination`; returns dataset.json."""
    from classifier.machinery import datasets, download

    full = datasets.get_dataset("fashion_mnist")
    destination.mkdir(parents=True, exist_ok=True)
    files = []
    for expected in full.files:
        problem = download.check_file(source / expected.name, expected)
        if problem:
            raise SystemExit(f"error: {problem} (apt-get install dataset-fashion-mnist)")
        count = TEST_IMAGES if expected.name.startswith("t10k") else TRAIN_IMAGES
        content = _idx_prefix(gzip.decompress((source / expected.name).read_bytes()), count)
        blob = gzip.compress(content, mtime=0)
        (destination / expected.name).write_bytes(blob)
        files.append(datasets.DataFile(expected.name, hashlib.sha256(blob).hexdigest(), len(blob),
                                       hashlib.sha256(content).hexdigest()))
    entry = dataclasses.replace(full, name=NAME, files=tuple(files), base_url="http://127.0.0.1:9/unused/",
                                title=f"Fashion-MNIST, first {TRAIN_IMAGES} training and {TEST_IMAGES} test images")
    spec = destination / "dataset.json"
    spec.write_text(json.dumps(dataclasses.asdict(entry), indent=1) + "\n")
    return spec


def register(spec: Path) -> None:
    """Add the entry in `spec` to the lab's registries, for this process only."""
    from classifier import registry
    from classifier.machinery import datasets

    fields = json.loads(spec.read_text())
    entry = datasets.Dataset(**{**fields, "files": tuple(datasets.DataFile(**item) for item in fields["files"]),
                                "class_names": tuple(fields["class_names"]),
                                "image_shape": tuple(fields["image_shape"])})
    datasets.DATASETS[entry.name] = entry
    registry.DATASETS = (*registry.DATASETS, entry.name)


def main(arguments: list[str]) -> int:
    if arguments[:1] == ["build"] and len(arguments) == 3:
        print(build(Path(arguments[1]), Path(arguments[2])))
        return 0
    if arguments[:1] == ["invoke"] and len(arguments) >= 3:
        register(Path(arguments[1]))
        from invoke.main import program

        program.run(["invoke", *arguments[2:]])
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
