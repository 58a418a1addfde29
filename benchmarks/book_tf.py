"""The book's TensorFlow code (Deep Learning with Python, 2nd ed., ch. 2) and its Keras model,
as the baselines of the benchmarks.

NaiveDense, NaiveSequential, BatchGenerator, one_training_step and update_weights (the
assign_sub version) are the book's; `loop_epoch` is the inner loop of the book's fit. Importing
this module imports TensorFlow.
"""

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

LEARNING_RATE = 1e-3


class NaiveDense:
    def __init__(self, input_size, output_size, activation):
        self.activation = activation
        self.W = tf.Variable(tf.random.uniform((input_size, output_size), minval=0, maxval=1e-1))
        self.b = tf.Variable(tf.zeros((output_size,)))

    def __call__(self, inputs):
        return self.activation(tf.matmul(inputs, self.W) + self.b)

    @property
    def weights(self):
        return [self.W, self.b]


class NaiveSequential:
    def __init__(self, layers):
        self.layers = layers

    def __call__(self, inputs):
        x = inputs
        for layer in self.layers:
            x = layer(x)
        return x

    @property
    def weights(self):
        return [w for layer in self.layers for w in layer.weights]


class BatchGenerator:
    def __init__(self, images, labels, batch_size=128):
        assert len(images) == len(labels)
        self.index = 0
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.num_batches = math.ceil(len(images) / batch_size)

    def next(self):
        images = self.images[self.index : self.index + self.batch_size]
        labels = self.labels[self.index : self.index + self.batch_size]
        self.index += self.batch_size
        return images, labels


def update_weights(gradients, weights):
    for g, w in zip(gradients, weights):
        w.assign_sub(g * LEARNING_RATE)


def one_training_step(model, images_batch, labels_batch):
    with tf.GradientTape() as tape:
        predictions = model(images_batch)
        per_sample_losses = keras.losses.sparse_categorical_crossentropy(labels_batch, predictions)
        average_loss = tf.reduce_mean(per_sample_losses)
    gradients = tape.gradient(average_loss, model.weights)
    update_weights(gradients, model.weights)
    return average_loss


def book_model(hidden=512):
    """The book's model: 784 -> hidden relu -> 10 softmax."""
    return NaiveSequential(
        [NaiveDense(28 * 28, hidden, tf.nn.relu), NaiveDense(hidden, 10, tf.nn.softmax)]
    )


def compiled_step(model):
    """The book's one_training_step for `model` under tf.function."""
    return tf.function(
        lambda images_batch, labels_batch: one_training_step(model, images_batch, labels_batch)
    )


def loop_epoch(step, images, labels, num_batches=None):
    """The book's fit loop over one epoch (or its first num_batches) of step(images, labels)."""
    batch_generator = BatchGenerator(images, labels)
    for _ in range(num_batches or batch_generator.num_batches):
        step(*batch_generator.next())


def keras_model(hidden=512):
    """The same layers in Keras: Dense relu, Dense softmax, SGD 1e-3, sparse categorical
    cross-entropy; its fit shuffles by default, as in the book."""
    model = keras.Sequential(
        [
            keras.Input((28 * 28,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
    )
    return model
