"""Worker runtime (consume, ack, retry, dead-letter, graceful stop, metrics) and the built-in image and email kinds.

python -m qw_workers image|email                  # built-in kinds (qw_workers.builtins)
python -m qw_workers --app shop.tasks inventory   # a kind defined with queueworker.task
Both are found in the registry and run by qw_workers.handlers.make_handler.
"""

from qw_workers.errors import PermanentError, RetryableError

__all__ = ["PermanentError", "RetryableError"]
