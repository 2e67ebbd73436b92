"""Virtual execution: nodes whose tasks are timed, not run (`backend.py`)."""
