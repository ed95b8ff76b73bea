"""The only package that imports ComfyUI.

`bootstrap()` sets ComfyUI's import-time global state (arguments, model
folders, custom nodes, the PromptServer stand-in) once per process, before
anything imports `comfy`. Everything else in comfybento talks to ComfyUI
through this package.
"""
