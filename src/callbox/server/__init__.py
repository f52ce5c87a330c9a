"""The Trio shell and the application APIs built on it."""
