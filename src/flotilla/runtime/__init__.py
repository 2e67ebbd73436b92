"""What runs on a node: the agent daemon that launches tasks and the per-task
supervisor that owns a task's processes, logs and exit code."""
