"""schoolgate.gateway: the appliance's network setup and the kernel's part of the filtering.

- `ruleset`: the nftables ruleset as a pure function of the configuration and the policy's
  block address (DNS redirect, web steering into the proxy, refusals, NAT), for the
  deployment mode the configuration names: gateway here, bridge in `ruleset_bridge`,
  dns-only in `ruleset_dnsonly`; `modes` says in plain words what each mode leaves to the
  school's own equipment.
- `nft`: applying it atomically, feeding the watched sets (`NftWatchedSets`), counters.
- `netsetup`: links, the bridge, addresses, sysctls and pinned neighbours through pyroute2.
- `nflog` + `circumvention`: refused circumvention attempts, read from NFLOG, become events.
- `sets`: the WatchedSets protocol the DNS daemon writes to.
"""
