"""The lecture's two PyTorch pitfalls, measured: one seed, two trainings, three evaluations.

    A  `torch_lecture`  softmax output fed to CrossEntropyLoss, F.dropout(x) also at evaluation
    A' the same weights as A, evaluated with dropout off (pitfall 2 removed)
    B  `torch_module`   logits into CrossEntropyLoss, dropout only in training (both removed)

A and B start from the same weights (same seed, same layers in the same
order) and see the same batches and the same dropout masks: in training,
"dropout always" and "dropout in training" are the same thing. So A' vs B is
pitfall 1 alone (what double softmax does to learning), and A vs A' is
pitfall 2 alone (what dropout at evaluation does to the test numbers). A is
evaluated several times to show that its accuracy changes from call to call.

    python benchmarks/torch_pitfalls.py --data-dir data --epochs 5 --seed 42 --json benchmarks/results/torch_pitfalls.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from classifier.config import make_config  # noqa: E402
from classifier.lecture.split import prepare  # noqa: E402
from classifier.machinery.datasets import get_dataset, load_arrays  # noqa: E402
from classifier.machinery.download import dataset_folder, verified_files  # noqa: E402
from classifier.lecture.torch_models import build_torch_model  # noqa: E402
from classifier.lecture.torch_train import TorchTrainer, evaluate_torch, seed_torch, weights_sha256  # noqa: E402

SUMMARY = ("loss", "accuracy", "argmax_accuracy", "cross_entropy")


def _train(name, config, dataset, splits):
    train, val, test = splits
    seed_torch(config.seed, config.deterministic)
    model = build_torch_model(name, dataset.image_shape, len(dataset.class_names))
    trainer = TorchTrainer(model, config)
    start = time.perf_counter()
    history = trainer.train(train, val)
    return model, {"train_seconds": time.perf_counter() - start, "history": history}


def _metrics(model, test, num_classes):
    metrics = evaluate_torch(model, test, num_classes)
    return {key: metrics[key] for key in SUMMARY}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeats", type=int, default=3, help="evaluations of A, to show they differ")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    config = make_config(dataset=args.dataset, epochs=args.epochs, limit=args.limit, seed=args.seed)
    dataset = get_dataset(config.dataset)
    root = Path(args.data_dir)
    verified_files(dataset, root)
    splits = prepare(load_arrays(dataset, dataset_folder(dataset, root)), limit=config.limit, val_split=config.val_split)
    num_classes = len(dataset.class_names)

    faithful, faithful_run = _train("torch_lecture", config, dataset, splits)
    evaluations = [_metrics(faithful, splits[2], num_classes) for _ in range(args.repeats)]
    faithful.dropout_in_eval = False  # the same weights, pitfall 2 removed
    no_eval_dropout = _metrics(faithful, splits[2], num_classes)
    corrected, corrected_run = _train("torch_module", config, dataset, splits)
    fixed = _metrics(corrected, splits[2], num_classes)

    result = {
        "config": {"dataset": config.dataset, "epochs": config.epochs, "limit": config.limit, "seed": config.seed,
                   "train_images": len(splits[0]), "test_images": len(splits[2])},
        "A_lecture_faithful": {"evaluations": evaluations, **faithful_run, "weights_sha256": weights_sha256(faithful)},
        "A_prime_same_weights_dropout_off": no_eval_dropout,
        "B_corrected": {**fixed, **corrected_run, "weights_sha256": weights_sha256(corrected)},
        "pitfall_1_double_softmax": {
            "accuracy_points": 100 * (no_eval_dropout["accuracy"] - fixed["accuracy"]),
            "cross_entropy": no_eval_dropout["cross_entropy"] - fixed["cross_entropy"],
        },
        "pitfall_2_dropout_at_evaluation": {
            "accuracy_points": 100 * (evaluations[0]["accuracy"] - no_eval_dropout["accuracy"]),
            "cross_entropy": evaluations[0]["cross_entropy"] - no_eval_dropout["cross_entropy"],
        },
    }
    print(json.dumps({key: value for key, value in result.items() if "history" not in str(key)}, indent=1,
                     default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
