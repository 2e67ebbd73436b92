"""Services: the operations behind the API, over a database session. Routers are
thin wrappers around these; reconcilers use them too.

Grouped by domain: `identity/`, `runs/` (and scheduling), `fleets/` (and nodes),
`serving/`, `metering/`. What every domain shares sits here: recipe storage
(`recipes.py`), the views of recipes and runs (`views.py`), events, persisted
back-offs and idempotent requests."""
