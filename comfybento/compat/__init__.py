"""Compatibility layers: other APIs served over comfybento (ComfyUI's own routes, Comfy API v2)."""
