"""comfy-pack packs (`.cpack.zip`): read one (reader), import it into the project (importer),
install the custom nodes it pins (nodes), and make its input files visible to ComfyUI (inputs)."""
