"""models.lock: parse, verify and fetch model files."""
