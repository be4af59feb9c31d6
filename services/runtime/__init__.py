"""The transport every Veil service runs on: server bootstrap, interceptors, auth, the
error→status table, health, reflection, metrics, settings and the typed client."""
