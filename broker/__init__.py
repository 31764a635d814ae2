"""exai-broker's daemon: the front end, router, calls, worker pool and observability."""
