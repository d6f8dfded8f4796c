"""The together dialect."""
