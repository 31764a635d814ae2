"""The tools every daemon serves when no `--server` is given (see tools.py)."""
