"""One module per REST resource, as in openai-python's `resources/`."""
