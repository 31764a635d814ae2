"""`python -m benchmarks` runs the load benchmark (same as `python -m benchmarks.load`)."""

from benchmarks.load import run

run()
