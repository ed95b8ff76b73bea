"""What the BentoML services in service.py delegate to."""
