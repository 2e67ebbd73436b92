"""The `flo` command line: a client of the REST API (and `flo server` to run one)."""
