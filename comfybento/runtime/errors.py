"""The one place where ComfyUI's error tuples and dicts become comfybento exceptions.

Their messages never show a server path: each absolute path becomes `…/<its last part>` (`scrub_paths`), and an
unmatched graph's own folder (`_graph-<hex>/`) disappears from the names the client gave.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from comfybento.errors import STORAGE_ERRNOS, InvalidRequest, NodeExecutionError, OutOfMemory, StorageFull, WorkflowError
from comfybento.workflows.batchplan import original_node_id

_ERRNO = re.compile(r"\[Errno (\d+)\]")
FieldNames = Mapping[tuple[str, str], str]  # (node id, input name) -> request field name

# An absolute POSIX path (not inside a word, a URL or a relative path), or a Windows one.
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])(?:/[^\s'\"`,;:()\[\]{}<>|]+)+|\b[A-Za-z]:\\[^\s'\"`,;()\[\]{}<>|]+")
_SCRATCH = re.compile(r"_graph-[0-9a-f]{32}/")


def scrub_paths(text: str) -> str:
    """A message with each server path cut to its last part, and the request folder of an unmatched graph left out."""
    def last_part(match: re.Match[str]) -> str:
        parts = [p for p in re.split(r"[/\\]", match.group(0)) if p]
        return "…/" + parts[-1] if parts else "…"

    return _SCRATCH.sub("", _ABSOLUTE.sub(last_part, text))


def from_validation(result: tuple[Any, ...], field_names: FieldNames) -> Exception:
    """validate_prompt's (ok, error, outputs, node_errors) as an exception naming node and input."""
    _, error, _, node_errors = result
    messages = []
    for node_id, info in (node_errors or {}).items():
        node = original_node_id(str(node_id))
        for reason in info.get("errors", []):
            input_name = (reason.get("extra_info") or {}).get("input_name")
            where = f"node {node} ({info.get('class_type')})"
            if input_name:
                field = field_names.get((node, input_name))
                where += f" input '{input_name}'" + (f" (request field '{field}')" if field else "")
            messages.append(f"{where}: {reason.get('message')}: {reason.get('details')}")
    if not messages and error:
        messages.append(f"{error.get('message')}: {error.get('details')}")
    text = scrub_paths("; ".join(messages)) or "ComfyUI rejected the graph"
    if any(field_names.get((original_node_id(str(n)), i)) for n, i in _inputs(node_errors)):
        return InvalidRequest(text)
    return WorkflowError(f"the workflow failed ComfyUI's validation: {text}")


def _inputs(node_errors: Any) -> list[tuple[str, str]]:
    pairs = []
    for node_id, info in (node_errors or {}).items():
        for reason in info.get("errors", []):
            input_name = (reason.get("extra_info") or {}).get("input_name")
            if input_name:
                pairs.append((str(node_id), str(input_name)))
    return pairs


def from_execution(status_messages: list[tuple[str, dict[str, Any]]]) -> Exception:
    """The executor's execution_error message as NodeExecutionError or OutOfMemory."""
    for event, data in status_messages:
        if event == "execution_error":
            node_id = original_node_id(str(data.get("node_id")))
            class_type = str(data.get("node_type"))
            message = scrub_paths(str(data.get("exception_message", "")).strip())
            if "OutOfMemory" in str(data.get("exception_type", "")):
                return OutOfMemory(f"node {node_id} ({class_type}) ran out of device memory: {message}")
            if (found := _ERRNO.search(message)) and int(found.group(1)) in STORAGE_ERRNOS:
                # a file-writing output node found the work folder full: transient, not the node's fault
                return StorageFull(f"node {node_id} ({class_type}) could not write its file: the work folder "
                                   f"(COMFYBENTO_WORK_DIR) is full ({STORAGE_ERRNOS[int(found.group(1))]}); retry later",
                                   folder="work")
            return NodeExecutionError(node_id, class_type, message)
        if event == "execution_interrupted":
            return NodeExecutionError(original_node_id(str(data.get("node_id"))), str(data.get("node_type")), "interrupted")
    return NodeExecutionError("?", "?", "execution failed without an error message")
