"""classifier/machinery/measure.py: children, their peak memory and errors, the FLOP count, the CPU's peak."""

import importlib.util
import sys

import pytest

from classifier.config import UserError
from classifier.machinery import measure


def python(code: str) -> list[str]:
    """A child command running `code`; run_child adds "--json PATH", so the result path is sys.argv[-1]."""
    return [sys.executable, "-c", code]


def test_a_child_result_comes_back_with_its_peak_memory_seen_from_outside():
    # 300 MiB written (so resident, not just reserved), held for a second, then let go before the result is written.
    code = ("import json, sys, time\nblock = b'\\x01' * (300 * 2**20)\ntime.sleep(1.0)\ndel block\n"
            "json.dump({'train_images': 7}, open(sys.argv[-1], 'w', encoding='utf-8'))")
    result = measure.run_child(python(code), "benchmark of test", {})
    assert result["train_images"] == 7
    # The held block and Python itself, not the smaller resident set the child ended with.
    assert 300 <= result["peak_rss_mib"] < 600


@pytest.mark.parametrize("code, message", [
    ("import sys; print('loading', file=sys.stderr); sys.exit('data is missing')",
     "benchmark of fit failed (exit 1): data is missing"),
    ("pass", "benchmark of fit failed (exit 0): no output"),  # exited well but wrote no result
])
def test_a_failed_child_is_one_line_naming_it_and_its_last_words(code, message):
    with pytest.raises(UserError) as raised:
        measure.run_child(python(code), "benchmark of fit", {})
    assert str(raised.value) == message


def test_a_recipe_chasing_the_lecture_target_trains_its_own_epochs_and_never_stops():
    assert measure.plan("lecture", None, (0.91,), lecture=True) == ("lecture", None, 5)
    assert measure.plan("lecture", 2, (0.91,), lecture=True) == ("lecture", None, 2)
    # Another recipe stops at the highest numeric target, the lower ones read off the same curve.
    assert measure.plan("fast", None, (0.91, 0.94), lecture=True) == ("fast", 0.94, None)
    assert measure.plan("fast", 2, (), lecture=True) == ("fast", None, 2)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")
def test_the_torch_subject_is_measured_in_a_child_by_its_spec(fashion_lab):
    run = measure.measure_subject("torch", 600, 2, str(fashion_lab / "data"), 42)
    assert run["train_images"] == 480 and run["eval_images"] == 10_000 and len(run["epoch_seconds"]) == 2
    # The epochs are timed inside the training that is timed whole.
    assert 0 < sum(run["epoch_seconds"]) <= run["train_seconds"]
    assert run["eval_seconds"] > 0 and 0.1 < run["test_accuracy"] <= 1.0 and run["peak_rss_mib"] > 50


def test_forward_flops_of_the_lecture_network():
    from classifier.machinery.recipes import build_model

    model = build_model("functional", (28, 28, 1), 10)
    # conv1 28x28x32 outputs x 3x3x1, conv2 14x14x64 x 3x3x32, dense 3136x100 and 100x10; 2 FLOP per multiply-add.
    expected = 2 * (28 * 28 * 32 * 9 + 14 * 14 * 64 * 9 * 32 + 3136 * 100 + 100 * 10)
    assert measure.forward_flops(model) == expected == 8_306_128


@pytest.mark.parametrize("vendor, flags, per_cycle", [
    ("AuthenticAMD", "fpu sse2 avx avx2 fma", 32),
    ("AuthenticAMD", "avx avx2 fma avx512f", 32),
    ("GenuineIntel", "avx avx2 fma avx512f", 64),
    ("GenuineIntel", "sse2 avx", 16),
    ("GenuineIntel", "sse2", 8),
])
def test_peak_from_cpu_flags_and_clock(vendor, flags, per_cycle):
    cpuinfo = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu MHz\t\t: 2500.000\nflags\t\t: {flags}\n"
    peak = measure.peak_gflops(cpuinfo, cores=2)
    assert peak["flop_per_cycle"] == per_cycle
    assert peak["gflops"] == pytest.approx(2 * 2.5 * per_cycle)
    assert peak["how"].startswith(f"2 cores x 2.50 GHz x {per_cycle} float32 FLOP/cycle (")


def test_no_cpuinfo_is_no_peak():
    assert measure.peak_gflops("", cores=2)["gflops"] == 0.0
