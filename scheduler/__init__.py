"""schoolgate.scheduler."""
