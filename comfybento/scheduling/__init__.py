"""Batch forming and admission control; testable without ComfyUI."""
