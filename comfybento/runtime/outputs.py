"""What an execution's output nodes produced, beyond the images comfybento collects itself.

Stock output nodes (SaveAnimatedWEBP, SaveWEBM, SaveAudio, ...), comfy-pack's and
custom ones write files into ComfyUI's output (or temp) folder and report them in
their UI result (`{"images": [{"filename", "subfolder", "type"}], "animated": [True]}`,
`{"audio": [...]}`, `{"text": ["..."]}`). After each execution the executor reads
those UI results: each reported file is moved into the execution's own folder
(a rename: the executor thread does no other I/O) and each text is kept.
The engine's encoding pool reads the files and deletes the folder.

Output nodes are made to run every time (`mark_runs`): a cached output node would
report the files of an earlier execution, which are gone.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import folder_paths

from comfybento.outputs.media import Produced, ProducedFile, ProducedText
from comfybento.workflows.graph import Graph

log = logging.getLogger(__name__)

RUN_INPUT = "comfybento_run"  # an input no node declares: ComfyUI ignores it, but it is part of the node's cache key


def mark_runs(prompt: Graph, output_ids: list[str]) -> None:
    """Give each output node a fresh cache key, so it executes (and writes its files) in this execution too."""
    run_id = uuid.uuid4().hex
    for node_id in output_ids:
        prompt[node_id]["inputs"][RUN_INPUT] = run_id


def output_node_ids(prompt: Graph, skip: frozenset[str]) -> list[str]:
    """The graph's output nodes (OUTPUT_NODE in ComfyUI's registry) other than the `skip` classes, in graph order."""
    import nodes

    found = []
    for node_id, node in prompt.items():
        cls = nodes.NODE_CLASS_MAPPINGS.get(node["class_type"])
        if node["class_type"] not in skip and cls is not None and getattr(cls, "OUTPUT_NODE", False) is True:
            found.append(node_id)
    return found


def _reported_file(entry: dict[str, Any]) -> Path | None:
    """The file a UI result entry names, if it lies inside ComfyUI's output or temp folder."""
    folder = folder_paths.get_temp_directory() if entry.get("type") == "temp" else folder_paths.get_output_directory()
    root = Path(folder).resolve()
    path = (root / str(entry.get("subfolder") or "") / str(entry["filename"])).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        log.warning("an output node reported %s, which is not a file in %s; skipped", path, root)
        return None
    return path


def collect(ui_outputs: dict[str, Any], output_ids: list[str], into: Path) -> list[Produced]:
    """Each output node's reported files (moved into `into`) and texts, in output order."""
    produced: list[Produced] = []
    for node_id in output_ids:
        ui = ui_outputs.get(node_id) or {}
        animated = any(bool(a) for a in ui.get("animated") or ())
        for key, entries in ui.items():
            if key == "animated" or not isinstance(entries, (list, tuple)):
                continue
            for entry in entries:
                if key == "text" and isinstance(entry, str):
                    produced.append(ProducedText(node_id, entry))
                elif isinstance(entry, dict) and "filename" in entry and entry.get("type") != "input":
                    path = _reported_file(entry)
                    if path is None:
                        continue
                    into.mkdir(parents=True, exist_ok=True)
                    moved = into / f"{len(produced):04d}_{path.name}"
                    shutil.move(path, moved)
                    produced.append(ProducedFile(node_id, moved, animated))
    return produced
