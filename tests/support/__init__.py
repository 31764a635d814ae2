"""Helpers shared by the test suites: processes, the daemon's health file, a browser."""
