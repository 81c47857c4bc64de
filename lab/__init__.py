"""schoolgate.lab."""
