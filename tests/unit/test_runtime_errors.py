"""ComfyUI's errors as comfybento exceptions (runtime/errors.py): node and input named, no server path shown."""

from __future__ import annotations

import pytest

from comfybento.errors import NodeExecutionError, WorkflowError
from comfybento.runtime.errors import from_execution, from_validation, scrub_paths

SCRATCH = "_graph-" + "0123456789abcdef" * 2


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (f"Dataset directory not found: /srv/app/.comfybento/output/{SCRATCH}/missing", "Dataset directory not found: …/missing"),
        ("Saving image outside the output folder is not allowed. full_output_folder: /etc, output_dir: /srv/app/output",
         "Saving image outside the output folder is not allowed. full_output_folder: …/etc, output_dir: …/output"),
        ("[Errno 2] No such file or directory: '/root/.cache/comfybento/secret.txt'", "[Errno 2] No such file or directory: '…/secret.txt'"),
        ("C:\\Users\\me\\x.png is missing", "…/x.png is missing"),
        (f"folder_name: '{SCRATCH}/ds' not in []", "folder_name: 'ds' not in []"),
        ("see https://example.com/a/b, a ratio of 3/4 and a/b/c", "see https://example.com/a/b, a ratio of 3/4 and a/b/c"),
    ],
)
def test_server_paths_are_cut_to_their_last_part(text, shown):
    assert scrub_paths(text) == shown


def test_execution_and_validation_errors_show_no_server_path():
    messages = [("execution_error", {"node_id": "7", "node_type": "LoadTrainingDataset",
                                     "exception_message": f"Dataset directory not found: /work/x/output/{SCRATCH}/train"})]
    error = from_execution(messages)
    assert isinstance(error, NodeExecutionError) and error.node_id == "7" and error.class_type == "LoadTrainingDataset"
    assert str(error) == "node 7 (LoadTrainingDataset) failed: Dataset directory not found: …/train"
    node_errors = {"9": {"class_type": "SaveImage", "errors": [{"message": "Bad prefix", "details": "/home/u/comfy/output is not allowed",
                                                                "extra_info": {"input_name": "filename_prefix"}}]}}
    refused = from_validation((False, None, [], node_errors), {})
    assert isinstance(refused, WorkflowError) and "/home" not in str(refused) and "…/output is not allowed" in str(refused)
