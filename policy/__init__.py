"""The pure policy core: compile the school's written policy once, then decide per request."""
