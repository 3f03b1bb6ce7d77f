"""Networks: vmap-friendly convolution and pooling, and the models built from layer stacks."""
