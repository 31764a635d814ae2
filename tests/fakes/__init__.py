"""In-process fakes of the outside services the daemon talks to."""
