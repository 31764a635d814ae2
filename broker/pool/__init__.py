"""The worker pool: supervised worker processes and the handles the calls use."""
