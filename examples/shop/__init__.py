"""The guide's shop: its background tasks, defined with the queueworker SDK (see README.md, "Your own tasks")."""
