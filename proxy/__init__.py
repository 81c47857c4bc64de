"""schoolgate.proxy."""
