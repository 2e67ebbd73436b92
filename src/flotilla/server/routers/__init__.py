"""HTTP routers: parse the request, call a service, shape the response. Every
router under /api requires an authenticated caller."""
