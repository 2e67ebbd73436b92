"""The recipe types' names, in one place. The envelope (`envelope.py`) maps each to
its spec model; the server's kinds (`server/kinds/`) map each to what applying one
checks, shows and changes."""

JOB = "job"
DEPLOYMENT = "deployment"
FLEET = "fleet"
LOAD_BALANCER = "load_balancer"
USER = "user"
GROUP = "group"
PROJECT = "project"
# Applied to the identity tables, not stored as recipes (`recipes/identity.py`).
IDENTITY_TYPES = (USER, GROUP, PROJECT)
