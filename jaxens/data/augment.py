"""On-device data augmentation of one member's batch, drawn from its augmentation key.

The standard CIFAR recipe (He et al. 2016, used by the ResNet-20 runs of the papers): pad each image by
`padding` zero pixels on every side, take a random H×W crop of the padded image, flip it horizontally
with probability ½. Augmentation runs on raw uint8 images, before normalization, inside the jitted step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AUGMENTATIONS = ("none", "flip", "crop", "crop_flip")


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Per-image random crops of the zero-padded images.

    Args:
      key: PRNG key.
      images: [B, H, W, C].
      padding: pixels of zeros added on each side; offsets are uniform in [0, 2·padding] on each axis.

    Returns:
      [B, H, W, C], image b equal to pad(images[b])[dy_b : dy_b + H, dx_b : dx_b + W].
    """
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * padding + 1)  # [B, 2]
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image [B, H, W, C] left-right with probability ½."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))  # [B]
    return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def augment_images(kind: str, key: jax.Array, images: jax.Array, padding: int = 4) -> jax.Array:
    """Applies augmentation `kind` ('none', 'flip', 'crop', 'crop_flip') to a batch [B, H, W, C]."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation {kind!r}: allowed: {', '.join(AUGMENTATIONS)}")
    if kind == "none":
        return images
    crop_key, flip_key = jax.random.split(key)
    if kind in ("crop", "crop_flip"):
        images = random_crop(crop_key, images, padding)
    if kind in ("flip", "crop_flip"):
        images = random_flip(flip_key, images)
    return images
