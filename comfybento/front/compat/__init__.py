"""Other services' APIs served over comfybento's jobs: ComfyUI's own server API (comfyui/), Comfy API v2 (comfy_v2/)."""
