"""ComfyUI's own server API (/prompt, /ws, /history, /view, /upload, /object_info, /queue ...), at /x and /api/x.

A /prompt graph that matches a served workflow becomes a one-item job of that
workflow (prompt_id = the job id): durable, run by the same job runner, and
batched on the engine with typed-endpoint traffic. Third-party ComfyUI clients
(comfy-api-simplified, @saintno/comfyui-sdk ...) work unchanged.
"""

from comfybento.compat.comfyui.routes import router

__all__ = ["router"]
