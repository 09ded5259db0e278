"""The queueworker HTTP API."""
