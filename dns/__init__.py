"""schoolgate.dns: the filtering DNS resolver (`schoolgate dns`).

The chain of stages is assembled in `resolver.py`; the listeners are in `server.py`, the worker
and supervisor processes in `daemon.py`.
"""
