"""The model side: loading a model, where its hook sites are, per-head edits, the shared
training loop, scoring and reading activations. Everything here runs inside one run's process."""
