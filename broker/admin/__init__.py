"""Commands an operator runs against a daemon: status, report, token rotation."""
