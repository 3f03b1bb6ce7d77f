"""Throughput benchmarks of cifar_jax: the engine's layouts (`benchmarks.engine`) and a PyTorch
reference of the same training (`benchmarks.torch_reference`); see benchmarks/README.md."""
