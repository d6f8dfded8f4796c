"""The fireworks dialect."""
