"""The transport every Veil service runs on: server bootstrap, interceptors, auth, the
error→status table, health, reflection, metrics, settings, the worker pool for CPU-heavy
work, logging set-up and the typed client."""
