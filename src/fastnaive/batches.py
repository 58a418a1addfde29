"""BatchGenerator: the book's sequential mini-batches over images and labels."""

import math

from fastnaive._validation import positive_int

__all__ = ["BatchGenerator"]


class BatchGenerator:
    """Yields (images[i:i + batch_size], labels[i:i + batch_size]) in order; the last may be short.

    `next()` returns the following batch and starts over after the last one;
    iterating gives one pass of `num_batches` batches from the start.
    """

    def __init__(self, images, labels, batch_size=128):
        if len(images) != len(labels):
            raise ValueError(
                f"Expected as many labels as images. "
                f"Received: len(images)={len(images)}, len(labels)={len(labels)}"
            )
        if len(images) == 0:
            raise ValueError("Expected at least one image. Received: len(images)=0")
        self.images = images
        self.labels = labels
        self.batch_size = positive_int(batch_size, "batch_size")
        self.num_batches = math.ceil(len(images) / self.batch_size)
        self.index = 0

    def next(self):
        """Return the next (images_batch, labels_batch), wrapping to the start after the last."""
        batch = self._batch(self.index)
        self.index = (self.index + self.batch_size) % (self.num_batches * self.batch_size)
        return batch

    def _batch(self, start):
        stop = start + self.batch_size
        return self.images[start:stop], self.labels[start:stop]

    def __iter__(self):
        return (self._batch(k * self.batch_size) for k in range(self.num_batches))

    def __len__(self):
        return self.num_batches

    def __repr__(self):
        return (
            f"BatchGenerator({len(self.images)} samples, batch_size={self.batch_size}, "
            f"num_batches={self.num_batches})"
        )
