"""The model-server side without gRPC: the model contract, batched kernel calls, weight
loading and the python-backend adapter that ``triton_models/*/1/model.py`` imports."""
