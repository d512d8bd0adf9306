"""Training on the device: the trainer (``trainer``), on-device augmentation
(``augmentation``), torch's fused optimizer kernels (``kernels``), and the choice of
device (``device``)."""
