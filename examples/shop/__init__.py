"""A small shop on Dramatiq with dramatiq-tracker: an example application and its tests (README.md)."""
