"""The book's TensorFlow code (chapter 2: NaiveDense, NaiveSequential, one_training_step,
update_weights) as the tests' oracle, with the initial weights copied from a fastnaive model
instead of drawn, so both start from the same point.

Importing this module imports TensorFlow; tests reach it through the `book` fixture.
"""

import tensorflow as tf

# On CPU the ops used here are deterministic. enable_op_determinism() is left
# off: it would make every unseeded tf.random call (the book's own init) raise.
tf.config.set_visible_devices([], "GPU")

learning_rate = 1e-3
TF_ACTIVATIONS = {"relu": tf.nn.relu, "softmax": tf.nn.softmax, None: tf.identity}


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


def copy_of(model):
    """The book's TF model with the architecture and current weights of a fastnaive model."""
    return NaiveSequential(
        [
            NaiveDense(layer.W.copy(), layer.b.copy(), TF_ACTIVATIONS[layer.activation])
            for layer in model.layers
        ]
    )


def loss_and_gradients(model, images_batch, labels_batch, from_logits=False):
    """The GradientTape part of the book's one_training_step: (average_loss, gradients)."""
    with tf.GradientTape() as tape:
        predictions = model(images_batch)
        per_sample_losses = tf.keras.losses.sparse_categorical_crossentropy(
            labels_batch, predictions, from_logits=from_logits
        )
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
