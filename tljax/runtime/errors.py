"""The failures that are the user's input or environment: one line each, never a traceback, and
the rule for which of them a cluster job retries."""


class UserError(RuntimeError):
  """A failure tljax explains in one line: data or weights unavailable, processes out of step,
  jobs that failed for good."""


# Shown by the entry point (tljax.run) as 'tljax: error: <message>'.
USER_ERRORS = (ValueError, OSError, MemoryError, FloatingPointError, UserError)
# Of those, what a cluster job retries: a file system's or network's hiccup may pass; a bad
# config, missing data or too little memory fails the same way again.
RETRIED = (OSError,)


class FinalJobError(UserError):
  """A job's user error that a retry would repeat: the launcher does not resubmit it."""


FINAL_PREFIX = f'{FinalJobError.__module__}.{FinalJobError.__name__}: '


def is_final(exc):
  """Whether a job that raised `exc` would fail the same way again."""
  return isinstance(exc, USER_ERRORS) and not isinstance(exc, RETRIED)


def final_line(line):
  """The message of a failed job's last traceback line when it is final (FinalJobError), else
  None."""
  return line[len(FINAL_PREFIX):] if line.startswith(FINAL_PREFIX) else None
