"""The one exception type the core raises for bad input, so every face can show its message as is."""


class InputError(ValueError):
    """A volume, mask, bundle or path the core cannot use; the message is one line meant for the user."""
