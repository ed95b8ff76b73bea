"""Workflows: load API-format graphs, check them, infer typed parameters, bind requests."""
