"""schoolgate.gateway."""
