"""Shared fixtures: the real MNIST, and the book's TensorFlow model as the oracle.

The TensorFlow side is the book's chapter-2 code (NaiveDense, NaiveSequential,
one_training_step, update_weights), with the initial weights copied from a
fastnaive model instead of drawn, so both start from the same point.
"""
import types

import pytest
import tensorflow as tf

import fastnaive

# On CPU the ops used here are deterministic. enable_op_determinism() is left
# off: it would make every unseeded tf.random call (the book's own init) raise.
tf.config.set_visible_devices([], "GPU")

learning_rate = 1e-3
TF_ACTIVATIONS = {"relu": tf.nn.relu, "softmax": tf.nn.softmax, None: tf.identity}


@pytest.fixture(scope="session")
def mnist():
    """((train_images, train_labels), (test_images, test_labels)), preprocessed as in the book.

    The arrays are shared by every test, hence read-only.
    """
    try:
        data = fastnaive.datasets.mnist.load_data()
    except (OSError, ValueError) as exc:
        failure = (f"The MNIST tests need the real MNIST: set FASTNAIVE_DATA to a folder "
                   f"holding mnist.npz. Loading it failed with:\n{exc}")
    else:
        failure = None
    if failure:
        pytest.fail(failure, pytrace=False)
    (train_images, train_labels), (test_images, test_labels) = data
    train_images = train_images.reshape((60000, 28 * 28)).astype("float32") / 255
    test_images = test_images.reshape((10000, 28 * 28)).astype("float32") / 255
    for array in (train_images, train_labels, test_images, test_labels):
        array.setflags(write=False)
    return (train_images, train_labels), (test_images, test_labels)


class NaiveDense:
    """The book's layer; W and b start from given arrays instead of tf.random.uniform and zeros."""

    def __init__(self, W, b, activation):
        self.activation = activation
        self.W = tf.Variable(W)
        self.b = tf.Variable(b)

    def __call__(self, inputs):
        return self.activation(tf.matmul(inputs, self.W) + self.b)

    @property
    def weights(self):
        return [self.W, self.b]


class NaiveSequential:
    """The book's model."""

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, inputs):
        x = inputs
        for layer in self.layers:
            x = layer(x)
        return x

    @property
    def weights(self):
        weights = []
        for layer in self.layers:
            weights += layer.weights
        return weights


def tf_copy_of(model):
    """The book's TF model with the architecture and current weights of a fastnaive model."""
    return NaiveSequential([NaiveDense(layer.W.copy(), layer.b.copy(),
                                       TF_ACTIVATIONS[layer.activation])
                            for layer in model.layers])


def loss_and_gradients(model, images_batch, labels_batch, from_logits=False):
    """The GradientTape part of the book's one_training_step: (average_loss, gradients)."""
    with tf.GradientTape() as tape:
        predictions = model(images_batch)
        per_sample_losses = tf.keras.losses.sparse_categorical_crossentropy(
            labels_batch, predictions, from_logits=from_logits)
        average_loss = tf.reduce_mean(per_sample_losses)
    gradients = tape.gradient(average_loss, model.weights)
    return average_loss, gradients


def update_weights(gradients, weights):
    for g, w in zip(gradients, weights):
        w.assign_sub(g * learning_rate)


def one_training_step(model, images_batch, labels_batch, from_logits=False):
    """The book's training step; from_logits=True for a model whose outputs are logits."""
    average_loss, gradients = loss_and_gradients(model, images_batch, labels_batch, from_logits)
    update_weights(gradients, model.weights)
    return average_loss


@pytest.fixture(scope="session")
def book():
    """The book's TF code: copy_of(fastnaive_model), loss_and_gradients, one_training_step."""
    return types.SimpleNamespace(copy_of=tf_copy_of, loss_and_gradients=loss_and_gradients,
                                 one_training_step=one_training_step)
