"""The resolver's stages, one concern each, in the order the chain runs them (see resolver.py)."""
