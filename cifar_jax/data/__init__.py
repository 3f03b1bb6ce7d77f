"""Images and labels: dataset sources and their cache, train/validation splits, normalisation and ZCA, in-step augmentation."""
