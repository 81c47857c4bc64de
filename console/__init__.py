"""schoolgate.console."""
