"""cifar_jax: training-dynamics studies on CIFAR-10 with many runs in one compiled program."""
