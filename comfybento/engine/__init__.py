"""The engine process: the only one that imports torch and ComfyUI (importing this package loads neither)."""
