"""The Flotilla server: FastAPI app, services, store and reconcilers."""
