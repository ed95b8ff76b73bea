"""comfybento: serve ComfyUI workflows as typed, batched BentoML endpoints."""

from __future__ import annotations

__version__ = "0.1.0"
