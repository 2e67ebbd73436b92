"""Hosts reached over SSH (an SSH fleet's on-prem machines): checked, given the
Flotilla agent and its certificate, and started as nodes (`enroll.py`)."""
