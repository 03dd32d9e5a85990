"""The one exception type for bad input data."""


class DataError(ValueError):
    """Bad input data; the message names the file, column or value."""
