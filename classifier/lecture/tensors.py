"""Lecture 1.1, tensor basics, as a runnable demonstration: `invoke tensors`.

Each step prints what it shows and returns its facts, so the tests can check
the same things the students read.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def demonstrate() -> dict:
    """Run the tensor-basics walk-through and return what it found.

    Returns:
        {"dtype", "rank", "shape", "size", "immutable", "new_tensor_differs",
         "numpy_round_trip", "eager_static_shape", "graph_static_shape",
         "graph_dynamic_shape"}.
    """
    facts = {}
    tensor_a = tf.constant([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], dtype=tf.int32)
    print("== 1. Properties")
    print("Type of every element:", tensor_a.dtype)
    print("Number of axes (=Rank):", tensor_a.ndim)
    print("Shape of tensor:", tensor_a.shape)
    print("Total number of elements:", tf.size(tensor_a).numpy())
    facts.update(dtype=tensor_a.dtype.name, rank=tensor_a.ndim, shape=list(tensor_a.shape), size=int(tf.size(tensor_a)))

    print("\n== 2. Immutable: a tensor cannot be changed, only replaced by a new one")
    try:
        tensor_a[0, 0, 0] = 100  # type: ignore[index]
        facts["immutable"] = False
    except TypeError as error:
        print(f"tensor_a[0, 0, 0] = 100  ->  TypeError: {error}")
        facts["immutable"] = True
    tensor_b = tensor_a + 1
    print("tensor_b = tensor_a + 1 is a new tensor; tensor_a[0, 0] is still", tensor_a[0, 0].numpy())
    facts["new_tensor_differs"] = tensor_b is not tensor_a and int(tensor_a[0, 0, 0]) == 1 and int(tensor_b[0, 0, 0]) == 2

    print("\n== 3. NumPy round trip")
    array = tensor_a.numpy()
    print("To numpy array:\n", array[0])
    back = tf.convert_to_tensor(array)
    print("Back to Tensor:", back[0])
    facts["numpy_round_trip"] = isinstance(array, np.ndarray) and bool(tf.reduce_all(back == tensor_a))

    print("\n== 4. Static shape (tensor.shape) and dynamic shape (tf.shape(tensor))")
    print("eager: tensor.shape =", tensor_a.shape, " tf.shape(tensor) =", tf.shape(tensor_a).numpy())
    facts["eager_static_shape"] = list(tensor_a.shape)
    traced = {}

    @tf.function(input_signature=[tf.TensorSpec(shape=(None, 3), dtype=tf.float32)])
    def describe(x):
        # Runs once while tracing: the batch size is not known yet.
        traced["static"] = x.shape.as_list()
        tf.print("in tf.function, at run time: tf.shape(x) =", tf.shape(x))
        return tf.shape(x)

    dynamic = describe(tf.zeros((5, 3)))
    print("in tf.function, while tracing: x.shape =", traced["static"], "(None: unknown until it runs)")
    facts["graph_static_shape"] = traced["static"]
    facts["graph_dynamic_shape"] = dynamic.numpy().tolist()
    return facts
