from utils import UserError


class DataError(UserError, ValueError):
    """Data that cannot be used as given; the message is one line naming the file and the fix."""
