"""Run records: the typed record of one (method, task, seed) run, and its files on disk."""
