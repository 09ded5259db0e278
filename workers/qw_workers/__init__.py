"""Worker runtime (consume, ack, retry, dead-letter, graceful stop, metrics) and the image and email handlers.

python -m qw_workers image|email
python -m qw_workers --app shop.tasks inventory   # a kind defined with queueworker.task (qw_workers.sdk)
"""

from qw_workers.errors import PermanentError, RetryableError

__all__ = ["PermanentError", "RetryableError"]
