"""The front: the light web tier (endpoints, jobs, compatibility APIs); never imports torch or ComfyUI."""
