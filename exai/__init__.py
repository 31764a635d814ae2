"""The wire vocabulary of exai-broker, shared by the daemon, its workers and the shim.

Error codes and the error tree, IPC messages and their framing, settings, the model
registry, address helpers and exit codes. It imports nothing from broker/, workers/
or shim/.
"""

__version__ = "0.1.0"
