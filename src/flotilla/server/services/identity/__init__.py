"""Identity: users, groups, projects and roles, tokens, SSH keys, secrets, and the
audit log of who did what. The access rules themselves are `server/identity.py`."""
