"""Lecture 1.1's facts, as the demonstration shows them."""

from classifier.lecture.tensors import demonstrate


def test_demonstration_shows_the_lecture_facts(capsys):
    facts = demonstrate()
    assert facts["dtype"] == "int32" and facts["rank"] == 3 and facts["shape"] == [2, 2, 3] and facts["size"] == 12
    assert facts["immutable"] is True and facts["new_tensor_differs"] is True
    assert facts["numpy_round_trip"] is True
    assert facts["eager_static_shape"] == [2, 2, 3]
    assert facts["graph_static_shape"] == [None, 3]
    assert facts["graph_dynamic_shape"] == [5, 3]
    assert "does not support item assignment" in capsys.readouterr().out
