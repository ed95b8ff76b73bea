"""Durable batch jobs: submit many items, follow progress, collect results, survive restarts."""
