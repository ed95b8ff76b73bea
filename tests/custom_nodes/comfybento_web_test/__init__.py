"""A custom node module with a web folder and no nodes: the editor at /comfy/ loads its script (tests/e2e/test_editor.py).

ComfyUI records WEB_DIRECTORY on loading the module; /extensions lists its scripts and the editor imports them.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
WEB_DIRECTORY = "./js"
