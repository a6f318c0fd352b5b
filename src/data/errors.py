"""The one exception the data package raises for problems with the user's data."""


class DataError(ValueError):
    """One-line message: the path looked in, what was wrong, and the layout expected.

    Raised before any training starts, so a sweep fails in seconds instead of after the
    first trial's model has been built.
    """
