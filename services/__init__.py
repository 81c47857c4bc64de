"""schoolgate.services."""
