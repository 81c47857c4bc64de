"""schoolgate.lab: a school LAN, the gateway and an internet in network namespaces.

`schoolgate lab up|down|status|clock` (root) builds it and runs the real appliance daemons
in the gateway namespace with the example policy; `LabClient` drives it from tests and
benchmarks. See `schoolgate.lab.lab` for the layout.
"""
