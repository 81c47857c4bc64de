"""schoolgate: network filtering and monitoring for UK primary schools."""

__version__ = "0.1.0"
