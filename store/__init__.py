"""schoolgate.store."""
