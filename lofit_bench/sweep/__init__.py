"""Sweeps: checking settings, planning runs, executing them (one process per run), tuning on
dev, and the console. Nothing here knows a method or a task by name."""
