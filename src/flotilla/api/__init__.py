"""The typed contract of Flotilla's REST API: one pydantic model per request and
response body, shared by the server (`response_model=` on every route, so
`/openapi.json` describes every 2xx body), the SDK (`flotilla/client/`) and the CLI.
One module per resource, named as the router is (`api/nodes.py` for
`server/routers/nodes.py`). Models forbid unknown fields: a view that grows a key
the contract does not have fails at once, in the tests, not in a client.

This package imports nothing of Flotilla's but `flotilla.core` (statuses) and the
recipe models it reuses (`flotilla.recipes`: a project member's role), so the SDK
can use it without the server (import-linter holds it to that)."""
