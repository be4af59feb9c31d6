"""The ``veil`` command: one module per command group (serve, up, triton, train, models,
ledger, demo)."""
