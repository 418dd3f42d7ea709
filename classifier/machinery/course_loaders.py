"""The course's own scripts, offline: its Keras and torchvision loaders find the lab's verified files.

After `invoke data --dataset cifar10` the lecture's unchanged lines

    dataset = tf.keras.datasets.cifar10
    (x_train, y_train), (x_test, y_test) = dataset.load_data()

    trainset = torchvision.datasets.CIFAR10(root='./data', train=True, download=True)

read the lab's copy and never download. Keras 3.15's loaders
(keras/src/datasets/*.py) look for these names under `<keras home>/datasets/`
($KERAS_HOME, else ~/.keras), and this module links them to the verified
copies in the lab's cache (hard links, or copies across file systems):

| loader | Keras looks for | Keras checks | lab file |
|---|---|---|---|
| cifar10.load_data | `cifar-10-batches-py-target_archive` (extracts it next to itself on every call) | SHA-256 6d958be0... | `cifar-10-python.tar.gz` |
| cifar100.load_data | `cifar-100-python-target_archive` | SHA-256 85cd44d0... | `cifar-100-python.tar.gz` |
| fashion_mnist.load_data | `fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` | nothing | the same four files |

TensorFlow's legacy Keras (tf_keras 2.21, which `invoke course` runs the
course's scripts with) looks for `cifar-10-batches-py.tar.gz` and
`cifar-100-python.tar.gz` there instead, checked by the same SHA-256, and the
same fashion-mnist files; it reads ~/.keras only (not $KERAS_HOME).

The SHA-256 Keras checks for CIFAR is the one the lab's registry verified, so
Keras accepts the lab's archive as its own download. Keras' MNIST is left out:
it reads a single `mnist.npz` checked against its own SHA-256, and the lab
holds MNIST's four IDX files, from which that exact file cannot be rebuilt (a
rebuilt one has another hash, and Keras would then download).

torchvision 0.28's dataset classes (torchvision/datasets/{cifar,mnist}.py)
skip the download when the files they read are already under `root`; this
module lays them out there, as torchvision's own download leaves them:

| class | torchvision reads under root | its download=True skips when | laid out from |
|---|---|---|---|
| CIFAR10 | `cifar-10-batches-py/` batches and `batches.meta` | every batch file has its published MD5 | the archive, extracted; `cifar-10-python.tar.gz` linked beside it |
| CIFAR100 | `cifar-100-python/{train,test,meta}` | the same | the same, `cifar-100-python.tar.gz` |
| MNIST | `MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte` | the four files exist | the IDX files, decompressed; the `.gz` linked beside them |
| FashionMNIST | `FashionMNIST/raw/...` | the same | the same |

Were the extracted folder damaged, torchvision would fall back to the archive
beside it (checked by MD5, which the verified archive has) and extract it
again, still without the network. The default root is the lab's data folder,
the `./data` the course's script passes when it runs from the project root:

    invoke data --dataset cifar10 --torchvision-root detlec/01_classifiers/data   # a clone of goodgodgd/detlec
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from classifier.config import UserError
from classifier.machinery.datasets import Dataset
from classifier.machinery.download import dataset_folder, verified_files
from classifier.machinery.files import sha256_of

_CHUNK = 1 << 20  # bytes per read when decompressing

# Keras 3.15's cache layout: path under <keras home>/datasets -> the lab's file name.
# The `.tar.gz` names are TensorFlow's legacy Keras 2.21 (tf_keras, which
# `invoke course` runs the course's scripts with): it checks the same SHA-256
# and extracts the archive beside itself once.
KERAS_LAYOUT: dict[str, dict[str, str]] = {
    "cifar10": {"cifar-10-batches-py-target_archive": "cifar-10-python.tar.gz",
                "cifar-10-batches-py.tar.gz": "cifar-10-python.tar.gz"},
    "cifar100": {"cifar-100-python-target_archive": "cifar-100-python.tar.gz",
                 "cifar-100-python.tar.gz": "cifar-100-python.tar.gz"},
    "fashion_mnist": {
        f"fashion-mnist/{name}": name
        for name in ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                     "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    },
}
NOT_COVERED = {
    "mnist": "keras.datasets.mnist.load_data() reads one mnist.npz checked against its own SHA-256, "
             "which cannot be rebuilt from the IDX files the lab verified; it would download",
}


def keras_home() -> Path:
    """Keras' cache root, found as Keras finds it: $KERAS_HOME, else ~/.keras (or /tmp/.keras if home is read-only)."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"])
    base = os.path.expanduser("~")
    return Path(base if os.access(base, os.W_OK) else "/tmp") / ".keras"


def check_keras_home(dataset: Dataset) -> None:
    """Refuse a Keras cache root that is a file, before minutes of download rather than after.

    Raises:
        UserError: naming $KERAS_HOME (or ~/.keras) and the way out.
    """
    if dataset.name not in KERAS_LAYOUT:
        return
    home = keras_home()
    for folder in (home, home / "datasets"):
        if folder.exists() and not folder.is_dir():
            named = "KERAS_HOME " if folder == home and "KERAS_HOME" in os.environ else ""
            raise UserError(f"{named}{folder} is a file, but Keras keeps its dataset cache in a folder; "
                            f"move the file away or point KERAS_HOME at a folder")


def fill_keras_cache(dataset: Dataset, data_dir: Path, home: Path | None = None) -> list[Path]:
    """Make Keras' cache entries for `dataset` the lab's verified files.

    Each entry is a hard link to the verified file (a copy when Keras' cache
    is on another file system), made under a temporary name and renamed into
    place, so a Keras loader never sees half an entry. A hard link rather
    than a symbolic one: it costs no space either, and it cannot dangle when
    the lab's data folder is moved or deleted (a dangling link would make
    Keras download into the vanished folder). An entry Keras downloaded
    itself is replaced by the lab's verified copy.

    Args:
        dataset: the registry entry; a dataset without a Keras layout returns [].
        data_dir: the lab's cache root.
        home: Keras' cache root (default: keras_home()).

    Returns:
        The Keras cache paths that now hold the verified files.

    Raises:
        UserError: the lab's copy is missing or fails verification.
    """
    layout = KERAS_LAYOUT.get(dataset.name)
    if not layout:
        return []
    verified_files(dataset, data_dir)
    folder = dataset_folder(dataset, data_dir).resolve()
    datasets = (home or keras_home()) / "datasets"
    written = []
    for entry, name in layout.items():
        source, target = folder / name, datasets / entry
        target.parent.mkdir(parents=True, exist_ok=True)
        _link(source, target)
        written.append(target)
    return written


def _link(source: Path, target: Path) -> None:
    """Make `target` the verified file `source`: a hard link (a copy across file systems), renamed into place."""
    if target.exists() and os.path.samefile(target, source):
        return
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temporary)
        except OSError:  # another file system (a container's bind mount): copy
            shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def keras_report(dataset: Dataset, written: list[Path]) -> str:
    """The line `invoke data` prints about Keras' cache."""
    if written:
        return (f"keras.datasets.{dataset.name}.load_data() now reads the verified files "
                f"in {written[0].parent} (no download)")
    why = NOT_COVERED.get(dataset.name, "Keras has no loader for it")
    return f"keras.datasets cache not filled for {dataset.name}: {why}"


@dataclass(frozen=True)
class TorchvisionLayout:
    """Where one torchvision 0.28 dataset class looks for its files under `root`."""

    class_name: str  # torchvision.datasets.<class_name>
    folder: str  # the folder under root that holds everything the class reads
    extracted: bool  # True: the lab's archive extracted (CIFAR); False: its .gz files decompressed into folder/raw


TORCHVISION_LAYOUT: dict[str, TorchvisionLayout] = {
    "cifar10": TorchvisionLayout("CIFAR10", "cifar-10-batches-py", extracted=True),
    "cifar100": TorchvisionLayout("CIFAR100", "cifar-100-python", extracted=True),
    "mnist": TorchvisionLayout("MNIST", "MNIST", extracted=False),
    "fashion_mnist": TorchvisionLayout("FashionMNIST", "FashionMNIST", extracted=False),
}
# Written last into a laid-out folder: which verified files it came from and every file's SHA-256.
_RECORD = ".lab-layout.json"


@dataclass(frozen=True)
class TorchvisionRoot:
    """A torchvision root laid out for one dataset, for the line `invoke data` prints."""

    layout: TorchvisionLayout
    root: Path  # what to pass as root=
    folder: Path  # root / layout.folder, the files torchvision reads
    rebuilt: bool  # False: a correct layout was already there and left alone


def fill_torchvision_root(dataset: Dataset, data_dir: Path, root: Path) -> TorchvisionRoot | None:
    """Lay out the lab's verified files under `root` as torchvision's download=True leaves them.

    The folder torchvision reads (e.g. root/cifar-10-batches-py) is built
    under a temporary name beside it and renamed into place, so torchvision
    never sees half of it; a folder already laid out from the same verified
    files, every file intact, is left alone, and anything else under that
    name (a damaged copy, an older torchvision's processed/ cache, which it
    would read first) is replaced. The archive or .gz files are hard links
    to the verified ones, so they cost no space.

    Args:
        dataset: the registry entry; a dataset torchvision has no class for returns None.
        data_dir: the lab's cache root.
        root: the root= the course's script passes to torchvision (created if missing).

    Returns:
        Where the files are, or None.

    Raises:
        UserError: the lab's copy is not verified, `root` cannot hold the
            folder, or the folder would be the lab's own dataset folder (on a
            case-insensitive disk `MNIST` is `mnist`).
    """
    layout = TORCHVISION_LAYOUT.get(dataset.name)
    if layout is None:
        return None
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"--torchvision-root {root} is a file; give a folder (torchvision's root=)")
    hashes = verified_files(dataset, data_dir)
    source = dataset_folder(dataset, data_dir).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--torchvision-root {root} cannot be created: {error.strerror}") from None
    folder = root / layout.folder
    if folder.exists() and os.path.samefile(folder, source):
        raise UserError(f"--torchvision-root {root}: torchvision's {layout.folder} folder would be the lab's own "
                        f"{source} (this disk ignores case); give another folder")
    _remove_leftovers(root, layout.folder)
    record = {"verified": hashes}
    if _intact(folder, record):
        rebuilt = False
    else:
        try:
            _build(dataset, layout, source, root, record)
        except OSError as error:
            raise UserError(f"--torchvision-root {root}: cannot write {folder}: {error.strerror or error}") from None
        rebuilt = True
    if layout.extracted:
        # torchvision's download=True falls back to the archive beside the folder (root/<archive>).
        _link(source / dataset.files[0].name, root / dataset.files[0].name)
    return TorchvisionRoot(layout, root, folder, rebuilt)


def _build(dataset: Dataset, layout: TorchvisionLayout, source: Path, root: Path, record: dict) -> None:
    """Build layout.folder under a temporary name in `root`, then swap it in for whatever is there."""
    staging = root / f".{layout.folder}.staging-{os.getpid()}"
    _remove(staging)
    staging.mkdir()
    try:
        built = staging / layout.folder
        if layout.extracted:
            with tarfile.open(source / dataset.files[0].name, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(f"{layout.folder}/")]
                # The archive is verified; where Python has it (3.11.4+), the "data" filter also refuses
                # links and paths that leave the folder.
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(staging, members=members, **safe)
        else:
            raw = built / "raw"
            raw.mkdir(parents=True)
            for file in dataset.files:
                _link(source / file.name, raw / file.name)
                with gzip.open(source / file.name, "rb") as compressed, open(raw / file.name[:-3], "wb") as plain:
                    shutil.copyfileobj(compressed, plain, _CHUNK)
        record["files"] = {str(path.relative_to(built)): sha256_of(path) for path in _files(built)}
        (built / _RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        target = root / layout.folder
        old = root / f".{layout.folder}.old-{os.getpid()}"
        if target.exists() or target.is_symlink():
            os.replace(target, old)  # a folder cannot be renamed over a full one; the old one goes after
        os.replace(built, target)
        _remove(old)
    finally:
        _remove(staging)


def _intact(folder: Path, record: dict) -> bool:
    """Whether `folder` was laid out from these verified files and holds exactly them, every byte as written."""
    try:
        written = json.loads((folder / _RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if written.get("verified") != record["verified"]:
        return False
    files = {str(path.relative_to(folder)) for path in _files(folder)} - {_RECORD}
    expected = written.get("files", {})
    return files == set(expected) and all(sha256_of(folder / name) == digest for name, digest in expected.items())


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if not path.is_dir())


def _remove_leftovers(root: Path, name: str) -> None:
    """Remove the staging and old folders an interrupted layout of `name` left in `root`."""
    for leftover in root.glob(f".{name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if kind.endswith((".staging", ".old")) and pid.isdigit() and not _alive(int(pid)):
            _remove(leftover)


def _remove(path: Path) -> None:
    """Remove a folder or a file (what stood under torchvision's folder name may be either), if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours can only be from an earlier call in this process that was interrupted
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def torchvision_report(dataset: Dataset, laid_out: TorchvisionRoot | None) -> str:
    """The line `invoke data` prints about torchvision: the exact call that now reads the lab's files."""
    if laid_out is None:
        return f"torchvision root not laid out for {dataset.name}: torchvision has no class for it"
    root = laid_out.root.resolve()
    try:
        relative = root.relative_to(Path.cwd().resolve())
        shown = "." if relative == Path() else f"./{relative}"  # as the course writes it: root='./data'
    except ValueError:
        shown = str(root)
    return (f"torchvision.datasets.{laid_out.layout.class_name}(root='{shown}', download=True) now reads the "
            f"verified files in {laid_out.folder.resolve()} (no download)")
