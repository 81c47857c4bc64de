"""schoolgate.dns."""
