"""schoolgate.proxy: the transparent filtering proxy and the school CA.

Running it (e.g. inside the lab's gateway namespace):

    schoolgate ca init --config schoolgate.toml [--owner schoolgate-proxy]   # once
    schoolgate proxy --config schoolgate.toml

How it listens: one TCP port, `[proxy] listen` (default "127.0.0.1:8081"; use "*:8081" for
every IPv4 and IPv6 address, or "0.0.0.0:8081"), in mitmproxy's transparent mode: the
original destination comes from conntrack (SO_ORIGINAL_DST), so the nftables rule is a plain
`redirect to :8081` of TCP 80 and 443 (both on the same port; TLS and HTTP are told apart by
the first bytes) for the block address and the watched sets. It needs no capability beyond
binding that port; it never opens an outgoing connection except for an allowed plain-HTTP
request or, with `inspect_search_engines`, an allowed search. Allowed TLS is passed through
byte for byte. Ready when the port accepts connections (the log says "listening on").

What it needs: the policy file (`policy`), the database (`[database] url`, already migrated),
the CA in `[proxy] ca_dir` (default <data_dir>/ca; the proxy refuses to start without it),
and for the fronting check the upstream resolvers (`[proxy] resolvers`, default
`[dns] upstreams`) to learn the watched services' addresses. The clock can be set with
SCHOOLGATE_CLOCK_FILE (schoolgate.clock).

Who takes a connection: in transparent mode the front door (schoolgate.proxy.front) owns the
port. It reads the ClientHello (schoolgate.proxy.hello), gives it to the addons' pipeline, and
itself closes a blocked connection or splices an allowed one; mitmproxy, listening only on an
internal loopback port, is handed the rest in-process (the block page, plain HTTP, anything
that is not a whole ClientHello). The kernel hands the front door a connection once its first
bytes are in (TCP_DEFER_ACCEPT; a silent one after a second), and a client silent for 10 s
more is closed.
With `[proxy] workers = N` (transparent mode) the supervisor runs N proxy processes ("proxy",
"proxy.2"...) sharing the port with SO_REUSEPORT, each with its own `daemon_status` row
("proxy.1"...) and stats file (`proxy-stats.1.json`...). Under `schoolgate run` the workers hand
their events to one event-writing process, "proxy.events" (schoolgate.proxy.events), over the
store's event channel (`--events-fd`); run on its own, the proxy writes its events itself.

What it does per connection (see schoolgate.proxy.addons and .judge): TLS is judged on the
SNI and on the dialled address; allowed TLS is passed through undecrypted; blocked TLS is
closed, or, for a device the register marks `trusts_school_ca`, decrypted with the school CA
and answered with the block page (HTTP 403); plain HTTP is judged on the Host and blocked
requests get the same page. A passed-through connection whose verdict expires (end of lunch)
is judged again and closed if now blocked.

What it reports: counters (connections_seen, tls_seen, passed_through, killed, intercepted,
inspected, block_pages_served, http_requests, http_forwarded, upstream_refused,
fronting_blocked, no_sni_blocked, passthroughs_closed, ...)
in `daemon_status` (name "proxy", every second) and in <data_dir>/proxy-stats.json
(`[proxy] stats_file`; also `schoolgate proxy stats --config FILE`).

Logging: at INFO the proxy logs its own start-up, reloads and errors, not mitmproxy's line per
client and server connect (each decision is an event in the database); run it with
`--log-level DEBUG` to see those.

Modules: `daemon` (the master and the loop), `front` (the front door), `hello` (the
ClientHello's SNI and ALPN), `events` (the event-writing process), `addons` (one concern each,
behind one `Pipeline`), `judge` (the pure verdict), `addresses` (address -> watched service),
`clients` (recent identity answers, used without leaving the loop), `blockpage`, `search`, `cli`.
"""
