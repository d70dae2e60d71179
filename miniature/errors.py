"""The miniature's user-facing errors are the pack's: one line, what is wrong and how to fix it."""
from hypernet.errors import HypernetError


class FontDataError(HypernetError):
    """The font data cannot be had as the curated list records it."""
