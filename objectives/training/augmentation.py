"""Batched image augmentation on the device, in the airbench style: once per epoch, the
whole shuffled training split is flipped and shifted in place with a few tensor ops; no
per-image Python and no copy of the data set beyond one padded buffer.

Only training sees it: validation, test, retraining's evaluation and the exported model
take the images as they are (the model holds no augmentation).
"""

from __future__ import annotations

import torch


class Augmenter:
    """Random horizontal flips (half the images) and random shifts of up to ``max_shift``
    pixels in each direction, the uncovered border filled with 0 (Fashion-MNIST's
    background), applied in place to ``n`` images stored flat as ``[n, height * width]``.
    Randomness comes from the ``generator`` passed in (the trainer's shuffle generator, so
    a resumed checkpoint augments exactly as the run it continues)."""

    def __init__(self, image_shape: tuple[int, int], max_shift: int, flip: bool, n: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.image_shape = image_shape
        self.max_shift = max_shift
        self.flip = flip
        height, width = image_shape
        # Zero borders written once; each epoch only the interior is overwritten.
        self.padded = (torch.zeros(n, height + 2 * max_shift, width + 2 * max_shift, device=device, dtype=dtype)
                       if max_shift else None)

    def __call__(self, features: torch.Tensor, generator: torch.Generator) -> None:
        height, width = self.image_shape
        images = features.view(len(features), height, width)
        if self.flip:
            flipped = torch.rand(len(images), device=images.device, generator=generator) < 0.5
            images[flipped] = images[flipped].flip(-1)
        if self.padded is not None:
            shift = self.max_shift
            self.padded[:, shift:shift + height, shift:shift + width] = images
            span = 2 * shift + 1
            # One (dy, dx) per image; the images sharing an offset are copied in one slice.
            offsets = torch.randint(0, span * span, (len(images),), device=images.device, generator=generator)
            for offset in range(span * span):
                dy, dx = divmod(offset, span)
                chosen = (offsets == offset).nonzero().squeeze(1)
                images[chosen] = self.padded[chosen, dy:dy + height, dx:dx + width]
