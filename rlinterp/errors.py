"""The one exception type users are meant to see.

``RlinterpError`` means "the input or the environment is wrong, and the message says how
to fix it". The CLI prints it as a single line without a traceback; anything else that
escapes is a bug in rlinterp and keeps its traceback.

It subclasses ``ValueError`` so that config dataclasses can raise it from
``__post_init__`` (where ``ValueError`` is the convention) and code catching
``ValueError`` keeps working.
"""


class RlinterpError(ValueError):
    """A problem the user can act on; ``str(error)`` is one actionable sentence."""
