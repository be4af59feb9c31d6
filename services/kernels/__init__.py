"""Transport-free kernels: pure torch, no gRPC, no Triton."""
