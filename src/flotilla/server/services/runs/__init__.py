"""Runs and scheduling: jobs, their runs and tasks, the queue, placement onto
nodes, launching onto a backend, and the pods and logs Saturn's clients read."""
