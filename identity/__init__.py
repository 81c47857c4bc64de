"""schoolgate.identity."""
