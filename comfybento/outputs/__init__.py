"""Output encoding and storage."""
