"""The backends services call for the heavy kernels: the interface, the in-process one,
the Triton client, and the factory that picks one from settings."""
