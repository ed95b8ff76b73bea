"""The scheduler (what runs next on the executor), its events, and admission control; no ComfyUI here."""
