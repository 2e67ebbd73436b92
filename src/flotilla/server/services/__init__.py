"""Services: the operations behind the API, over a database session. Routers are
thin wrappers around these; reconcilers use them too."""
