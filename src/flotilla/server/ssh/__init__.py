"""SSH access to running tasks (`start_ssh`): the gateway, the login-name targets
and the sessions it opens inside tasks."""
