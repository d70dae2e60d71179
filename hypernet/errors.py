"""One exception type for problems the user can fix (bad files, wrong inputs).

Its message is written for the user: what is wrong and how to fix it. The CLI prints it as one
line and the nodes let ComfyUI show it; anything else is a bug and keeps its traceback.
"""


class HypernetError(ValueError):
    """A problem with the user's input or files, explained in the message."""
