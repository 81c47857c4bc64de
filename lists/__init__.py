"""List subscriptions: download, check, compile and install list versions; say how they stand.

- `fetch`     conditional download (ETag, Last-Modified), size cap, deadline, optional pin
- `archive`   reading a squidguard set from a .tar.gz or a folder, refusing unsafe archives
- `compile`   parsing a download in its format into one list store version (numpy sorts)
- `state`     the state folder: versions, the manifest naming the version in force, the seed
- `update`    the whole round for each subscription, keeping the last good version on failure
- `status`    how each list stands (for `lists status`, doctor, the console and the self-test)
- `cli`       `schoolgate lists update|import|status`

The daemons never import this package's compiling half (numpy): they map the version the
manifest names through `schoolgate.lists.state` and read it with `schoolgate.policy.liststore`.
"""
