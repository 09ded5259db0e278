"""The contract shared by the API and the workers: settings, messages, topology, store, storage."""
