"""SSH sessions inside a running task, on the node that runs it: the shell, command
or SFTP process (`shell.py`) entered into an isolated task (`entry.py`), port
forwards to what the task listens on (`forwards.py`), what sessions leave running
(`leftovers.py`). The control plane's gateway (`server/ssh/`) uses them for tasks
on its own machine; a host's agent uses them in its session relay (`relay.py`),
which the gateway reaches for tasks on that host."""
