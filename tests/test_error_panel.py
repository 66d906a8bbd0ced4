"""Errors as ComfyUI's error panel shows them (the execution_error message): a short type
name, the problem on the first line, what to do right after it."""
import pytest

from graph_runner import GraphError


def _failure(graph, prompt) -> dict:
    with pytest.raises(GraphError) as err:
        graph.run(prompt)
    return err.value.details


def test_a_dataset_error_reads_well_in_the_panel(graph, comfy_dirs):
    details = _failure(graph, _dataset_graph("no_such_set"))
    assert details["exception_type"] == "LLLiteKit.DatasetError"
    first = details["exception_message"].splitlines()[0]
    assert "no_such_set" in first and "does not exist" in first and len(first) < 200


def test_a_refused_output_name_reads_well_in_the_panel(graph, comfy_dirs):
    from test_training_graph import _graph
    from training_data_helpers import ring_picture

    ring_picture(comfy_dirs / "input" / "train_a.png", 0)
    ring_picture(comfy_dirs / "input" / "train_b.png", 90)
    details = _failure(graph, _graph(1, output_name="../checkpoints/model"))
    assert details["exception_type"] == "LLLiteKit.BadName"
    lines = details["exception_message"].splitlines()
    assert lines[0] == "output_name '../checkpoints/model' is not allowed: it holds `..`."
    assert lines[1].startswith("Use a plain file name without extension")


def _dataset_graph(train_dir: str) -> dict:
    from test_training_graph import _graph

    prompt = _graph(1)
    prompt["5"] = {"class_type": "LLLiteKit_DatasetFromFolder", "inputs": {
        "train_dir": train_dir, "reg_dir": "", "caption_extension": ".txt", "resolution": 64, "batch_size": 1,
        "enable_bucket": False, "flip_aug": False, "shuffle_caption": False, "keep_tokens": 0, "caption_dropout_rate": 0.0}}
    return prompt
