"""Nodes on other hosts, each driven through its node agent over mutual TLS: the
connection and log mirror of one node (`remote.py`) and the backend that sends each
task to the agent of its node (`router.py`)."""
