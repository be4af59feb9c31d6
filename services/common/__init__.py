"""The leaf every layer may use: error kinds, the image codec and its limits, the db helper.

Imports nothing of ours, no grpc and no pydantic-settings (tests/test_architecture.py).
"""
