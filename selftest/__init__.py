"""schoolgate.selftest: the appliance proves, every school morning, that filtering works.

    vantage   where the checks ask from: a source address of the appliance in each role's
              network (on an appliance), or a lab device's namespace (in the lab)
    probes    one DNS question, one TLS connection, one HTTP request: real packets, no policy
    plan      what to ask and what the policy says the answer must be (pure)
    checks    runs the plan and the health checks, compares, gives results
    run       one self-test: checks, the check log, e-mail on failure
    cli       `schoolgate selftest --config C [--json]`
"""
