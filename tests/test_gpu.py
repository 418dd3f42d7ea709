"""GPU checks for the CUDA image: TensorFlow sees the GPU, Conv2D trains on it, memory grows.

    docker compose run --rm lab python -m pytest -m gpu tests/test_gpu.py -v

The Conv2D forward and backward pass is the one that failed in the lecture
with cuDNN's "No algorithm worked!" when TensorFlow had taken all GPU memory
up front. Without a GPU every test skips with the reason, unless
REQUIRE_GPU=true (the GPU workflow sets it), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def gpus():
    """The GPUs TensorFlow sees, with memory growth turned on by the lab's gpu_config()."""
    from classifier.lecture.runtime import gpu_config

    found = tf.config.list_physical_devices("GPU")
    if not found:
        reason = (f"no GPU visible to TensorFlow {tf.__version__} "
                  f"(built with CUDA: {tf.test.is_built_with_cuda()}); "
                  "run in the GPU image with the GPU passed through")
        if os.environ.get("REQUIRE_GPU") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    gpu_config()
    return found


def test_tensorflow_is_built_with_cuda_and_sees_the_gpu(gpus):
    assert tf.test.is_built_with_cuda()
    build = tf.sysconfig.get_build_info()
    assert build.get("cuda_version") and build.get("cudnn_version"), build
    logical = tf.config.list_logical_devices("GPU")
    assert len(logical) == len(gpus) >= 1
    details = tf.config.experimental.get_device_details(gpus[0])
    print(f"\n[gpu] {details.get('device_name')} compute capability {details.get('compute_capability')}, "
          f"CUDA {build['cuda_version']}, cuDNN {build['cudnn_version']}")


def test_memory_growth_is_on(gpus):
    # gpu_config() sets it through the API; the image also sets the variable,
    # which covers kernels that never call gpu_config().
    assert all(tf.config.experimental.get_memory_growth(gpu) for gpu in gpus)
    if os.environ.get("LAB_VARIANT"):  # inside the lab image
        assert os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH") == "true"


def test_conv2d_forward_and_backward_run_on_the_gpu(gpus):
    from tensorflow import keras

    images = tf.random.stateless_uniform((16, 32, 32, 3), seed=(1, 2))
    layer = keras.layers.Conv2D(32, 3, padding="same", activation="relu")
    layer.build(images.shape)

    def forward_backward(device: str):
        with tf.device(device):
            with tf.GradientTape() as tape:
                outputs = layer(images)
                loss = tf.reduce_mean(tf.square(outputs))
            gradients = tape.gradient(loss, layer.trainable_variables)
        return outputs, gradients

    outputs, gradients = forward_backward("/GPU:0")
    assert "GPU" in outputs.device, outputs.device
    assert outputs.shape == (16, 32, 32, 32)
    assert [g.shape for g in gradients] == [v.shape for v in layer.trainable_variables]
    assert all(bool(tf.reduce_all(tf.math.is_finite(g))) for g in gradients)
    assert float(tf.norm(gradients[0])) > 0.0

    cpu_outputs, cpu_gradients = forward_backward("/CPU:0")
    np.testing.assert_allclose(outputs.numpy(), cpu_outputs.numpy(), rtol=1e-3, atol=1e-3)
    for gpu_gradient, cpu_gradient in zip(gradients, cpu_gradients):
        np.testing.assert_allclose(gpu_gradient.numpy(), cpu_gradient.numpy(), rtol=1e-3, atol=1e-3)


def test_tensorflow_did_not_take_all_gpu_memory(gpus):
    # With memory growth TensorFlow holds what it used; without it, nearly all.
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is not mounted (NVIDIA_DRIVER_CAPABILITIES lacks 'utility')")
    with tf.device("/GPU:0"):
        float(tf.reduce_sum(tf.ones((1024, 1024))))
    query = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits", "-i", "0"],
                           capture_output=True, text=True, timeout=60, check=True)
    used, total = (float(value) for value in query.stdout.strip().splitlines()[0].split(","))
    assert used < 0.5 * total, f"{used:.0f} of {total:.0f} MiB in use"
