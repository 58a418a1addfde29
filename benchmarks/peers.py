"""The trainers of the benchmark matrix (matrix.py): one epoch of a multilayer perceptron
(ReLU hidden layers, softmax head, sparse categorical cross-entropy, SGD or Adam) in
fastnaive, PyTorch, JAX, Keras, NumPy and scikit-learn, each written the way a user of that
library writes it, all from the same initial weights on the same batches in the same order.

A workload (matrix.Workload) gives the layer sizes, the optimizer ("sgd" or "adam"), the
learning rate, the batch size and the dtype. Each peer is built once per workload
(untimed), then timed through `epoch()`; `reset()` (untimed) puts back the initial weights
and a fresh optimizer state, so every timed epoch does the same work; `weights()` returns
[W0, b0, W1, b1, ...] as NumPy arrays, W of shape (fan_in, fan_out), for the loss check.

Adam is Keras' (epsilon outside the square root, bias correction folded into the step
size) everywhere; PyTorch's Adam adds epsilon after the bias correction of v, so its
epsilon is set before each step to give the same step.

A peer's library is imported only when the peer is built (`configure_threads` imports
them all first, to set their thread counts before any of them starts a pool).
"""

import importlib.util
import math
import os
import warnings

import numpy as np

import fastnaive

BETA_1, BETA_2, EPSILON = 0.9, 0.999, 1e-7


def batch_bounds(n_samples, batch_size):
    """[(start, stop), ...] of the epoch's batches in order; the last may be short."""
    starts = range(0, n_samples, batch_size)
    return [(start, min(start + batch_size, n_samples)) for start in starts]


class Peer:
    """What every peer keeps: the workload, the initial weights, the data and its batches.

    epoch(batches) trains on the batches numbered `batches` (all of them by default), in
    order; a warm-up passes a few.
    """

    name = module = ""

    def __init__(self, workload, initial, x, y):
        self.workload, self.initial, self.x, self.y = workload, initial, x, y
        self.bounds = batch_bounds(len(x), workload.batch_size)

    def selected(self, batches):
        """[(start, stop), ...] of the batches numbered `batches`, or of all when None."""
        return self.bounds if batches is None else [self.bounds[i] for i in batches]

    def subset(self, batches):
        """(x, y) holding the rows of the batches numbered `batches` (all when None), in
        order, so that batching them again gives the same batches."""
        if batches is None:
            return self.x, self.y
        rows = np.concatenate([np.arange(start, stop) for start, stop in self.selected(batches)])
        return self.x[rows], self.y[rows]


class FastnaivePeer(Peer):
    """fastnaive.fit for one epoch on a NaiveSequential of NaiveDense layers."""

    name = "fastnaive"
    module = "fastnaive"

    def __init__(self, workload, initial, x, y):
        super().__init__(workload, initial, x, y)
        self.model = fastnaive.NaiveSequential(
            [
                fastnaive.NaiveDense(fan_in, fan_out, activation, dtype=workload.dtype)
                for (fan_in, fan_out), activation in zip(workload.layers, workload.activations)
            ]
        )
        self.reset()

    def reset(self):
        self.model.set_weights(self.initial)
        w = self.workload
        self.optimizer = (
            fastnaive.Adam(w.learning_rate, BETA_1, BETA_2, EPSILON)
            if w.optimizer == "adam"
            else fastnaive.SGD(w.learning_rate)
        )

    def epoch(self, batches=None, callbacks=None):
        fastnaive.fit(
            self.model,
            *self.subset(batches),
            epochs=1,
            batch_size=self.workload.batch_size,
            optimizer=self.optimizer,
            verbose=0,
            callbacks=callbacks,
        )

    def weights(self):
        return self.model.get_weights()


class NumpyPeer(Peer):
    """A straightforward NumPy step: forward, softmax cross-entropy, backward, update."""

    name = "NumPy"
    module = "numpy"

    def __init__(self, workload, initial, x, y):
        super().__init__(workload, initial, x, y)
        self.params = [w.copy() for w in initial]
        self.reset()

    def reset(self):
        for param, value in zip(self.params, self.initial):
            param[...] = value
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def gradients(self, xb, yb):
        n = len(xb)
        pairs = list(zip(self.params[::2], self.params[1::2]))
        activations = [xb]
        for W, b in pairs[:-1]:
            activations.append(np.maximum(activations[-1] @ W + b, 0))
        W, b = pairs[-1]
        logits = activations[-1] @ W + b
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        probabilities[np.arange(n), yb] -= 1
        delta = probabilities / n
        grads = [None] * len(self.params)
        for i in range(len(pairs) - 1, -1, -1):
            grads[2 * i] = activations[i].T @ delta
            grads[2 * i + 1] = delta.sum(axis=0)
            if i > 0:
                delta = (delta @ pairs[i][0].T) * (activations[i] > 0)
        return grads

    def epoch(self, batches=None):
        w = self.workload
        for start, stop in self.selected(batches):
            grads = self.gradients(self.x[start:stop], self.y[start:stop])
            if w.optimizer == "sgd":
                for param, grad in zip(self.params, grads):
                    param -= w.learning_rate * grad
                continue
            self.t += 1
            alpha = w.learning_rate * math.sqrt(1 - BETA_2**self.t) / (1 - BETA_1**self.t)
            for param, grad, m, v in zip(self.params, grads, self.m, self.v):
                m *= BETA_1
                m += (1 - BETA_1) * grad
                v *= BETA_2
                v += (1 - BETA_2) * grad * grad
                param -= alpha * m / (np.sqrt(v) + EPSILON)

    def weights(self):
        return [p.copy() for p in self.params]


class TorchPeer(Peer):
    """PyTorch's eager training loop: nn.Sequential of Linear and ReLU, CrossEntropyLoss on
    the logits, torch.optim.SGD or Adam, batches sliced from tensors made once."""

    name = "PyTorch"
    module = "torch"

    def __init__(self, workload, initial, x, y):
        import torch

        super().__init__(workload, initial, x, y)
        self.torch = torch
        dtype = getattr(torch, workload.dtype)
        modules = []
        for fan_in, fan_out in workload.layers:
            modules += [torch.nn.Linear(fan_in, fan_out, dtype=dtype), torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*modules[:-1])
        self.linears = [m for m in self.model if isinstance(m, torch.nn.Linear)]
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.inputs, self.labels = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
        self.reset()

    def reset(self):
        torch, w = self.torch, self.workload
        with torch.no_grad():
            for linear, W, b in zip(self.linears, self.initial[::2], self.initial[1::2]):
                linear.weight.copy_(torch.from_numpy(W.T))
                linear.bias.copy_(torch.from_numpy(b))
        self.steps = 0
        if w.optimizer == "adam":
            self.optimizer = torch.optim.Adam(
                self.model.parameters(), w.learning_rate, betas=(BETA_1, BETA_2), eps=EPSILON
            )
        else:
            self.optimizer = torch.optim.SGD(self.model.parameters(), w.learning_rate)

    def epoch(self, batches=None):
        model, loss_fn, optimizer = self.model, self.loss_fn, self.optimizer
        inputs, labels = self.inputs, self.labels
        adam = self.workload.optimizer == "adam"
        for start, stop in self.selected(batches):
            optimizer.zero_grad()
            loss = loss_fn(model(inputs[start:stop]), labels[start:stop])
            loss.backward()
            if adam:
                self.match_epsilon()
            optimizer.step()

    def match_epsilon(self):
        """Set the coming Adam step's epsilon so that it is Keras' step (PyTorch adds
        epsilon to sqrt(v / (1 - beta_2^t)); Keras and the others to sqrt(v))."""
        self.steps += 1
        epsilon = EPSILON / math.sqrt(1 - BETA_2**self.steps)
        for group in self.optimizer.param_groups:
            group["eps"] = epsilon

    def weights(self):
        out = []
        for linear in self.linears:
            out += [linear.weight.detach().numpy().T.copy(), linear.bias.detach().numpy().copy()]
        return out


class JaxPeer(Peer):
    """JAX: one jax.jit-compiled step (value_and_grad, then SGD or Adam written with
    tree_map), its parameter and optimizer buffers donated, on batches put on the device
    once."""

    name = "JAX"
    module = "jax"

    def __init__(self, workload, initial, x, y):
        import jax
        import jax.numpy as jnp

        super().__init__(workload, initial, x, y)
        self.jax, self.jnp = jax, jnp
        self.dtype = np.dtype(workload.dtype)
        lr = workload.learning_rate

        def loss_fn(params, xb, yb):
            a = xb
            for W, b in params[:-1]:
                a = jax.nn.relu(a @ W + b)
            W, b = params[-1]
            log_p = jax.nn.log_softmax(a @ W + b)
            return -jnp.mean(jnp.take_along_axis(log_p, yb[:, None], axis=1))

        def sgd_step(params, state, xb, yb):
            grads = jax.grad(loss_fn)(params, xb, yb)
            return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), state

        def adam_step(params, state, xb, yb):
            t, m, v = state
            grads = jax.grad(loss_fn)(params, xb, yb)
            t = t + 1
            step = t.astype(self.dtype)
            alpha = lr * jnp.sqrt(1 - BETA_2**step) / (1 - BETA_1**step)
            m = jax.tree_util.tree_map(lambda m, g: BETA_1 * m + (1 - BETA_1) * g, m, grads)
            v = jax.tree_util.tree_map(lambda v, g: BETA_2 * v + (1 - BETA_2) * g * g, v, grads)
            params = jax.tree_util.tree_map(
                lambda p, m, v: p - alpha * m / (jnp.sqrt(v) + EPSILON), params, m, v
            )
            return params, (t, m, v)

        step = adam_step if workload.optimizer == "adam" else sgd_step
        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.batches = [
            (jnp.asarray(x[start:stop]), jnp.asarray(y[start:stop].astype(np.int32)))
            for start, stop in self.bounds
        ]
        self.reset()

    def reset(self):
        jnp = self.jnp
        self.params = [
            (jnp.array(W), jnp.array(b)) for W, b in zip(self.initial[::2], self.initial[1::2])
        ]
        self.state = ()
        if self.workload.optimizer == "adam":
            m, v = ([(jnp.zeros_like(W), jnp.zeros_like(b)) for W, b in self.params] for _ in "mv")
            self.state = (jnp.zeros((), jnp.int32), m, v)

    def epoch(self, batches=None):
        params, state, step = self.params, self.state, self.step
        for i in range(len(self.batches)) if batches is None else batches:
            xb, yb = self.batches[i]
            params, state = step(params, state, xb, yb)
        self.params, self.state = self.jax.block_until_ready((params, state))

    def weights(self):
        return [np.array(w) for pair in self.params for w in pair]


class KerasPeer(Peer):
    """Keras `model.fit` for one epoch (shuffle=False) on a Sequential of Dense layers,
    softmax head, sparse categorical cross-entropy, compiled with the default settings."""

    name = "Keras"
    module = "keras"

    def __init__(self, workload, initial, x, y):
        import keras

        super().__init__(workload, initial, x, y)
        self.model = keras.Sequential(
            [keras.Input((workload.sizes[0],), dtype=workload.dtype)]
            + [
                keras.layers.Dense(fan_out, activation=activation, dtype=workload.dtype)
                for (_, fan_out), activation in zip(workload.layers, workload.activations)
            ]
        )
        optimizer = (
            keras.optimizers.Adam(workload.learning_rate, BETA_1, BETA_2, EPSILON)
            if workload.optimizer == "adam"
            else keras.optimizers.SGD(workload.learning_rate)
        )
        self.model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
        optimizer.build(self.model.trainable_variables)
        # The optimizer's variables (step count, learning rate, Adam's moments) as built.
        self.optimizer_state = [v.numpy() for v in optimizer.variables]
        self.reset()

    def reset(self):
        self.model.set_weights(self.initial)
        for variable, value in zip(self.model.optimizer.variables, self.optimizer_state):
            variable.assign(value)

    def epoch(self, batches=None):
        self.model.fit(
            *self.subset(batches),
            batch_size=self.workload.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )

    def weights(self):
        return self.model.get_weights()


class SklearnPeer(Peer):
    """scikit-learn's MLPClassifier, fit for one epoch (max_iter=1, warm_start, shuffle=False,
    alpha=0, constant learning rate, no momentum), its coefs_ and intercepts_ set to the
    initial weights; each fit starts a fresh optimizer."""

    name = "scikit-learn"
    module = "sklearn"

    def __init__(self, workload, initial, x, y):
        from sklearn.neural_network import MLPClassifier

        super().__init__(workload, initial, x, y)
        self.classifier = MLPClassifier(
            hidden_layer_sizes=workload.sizes[1:-1],
            activation="relu",
            solver=workload.optimizer,
            alpha=0.0,
            batch_size=workload.batch_size,
            learning_rate="constant",
            learning_rate_init=workload.learning_rate,
            max_iter=1,
            shuffle=False,
            momentum=0.0,
            nesterovs_momentum=False,
            beta_1=BETA_1,
            beta_2=BETA_2,
            epsilon=EPSILON,
            warm_start=True,
        )
        # One fit on a sample of each class builds the estimator; reset() then replaces its
        # weights, and every later fit (warm_start) trains them with a new optimizer.
        first = [int(np.flatnonzero(y == label)[0]) for label in np.unique(y)]
        self.fit(x[first], y[first])
        self.reset()

    def fit(self, x, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: max_iter=1 by design
            self.classifier.fit(x, y)

    def reset(self):
        c = self.classifier
        for target, value in zip(c.coefs_ + c.intercepts_, self.initial[::2] + self.initial[1::2]):
            target[...] = value

    def epoch(self, batches=None):
        self.fit(*self.subset(batches))

    def weights(self):
        c = self.classifier
        return [w.copy() for pair in zip(c.coefs_, c.intercepts_) for w in pair]


PEERS = [FastnaivePeer, TorchPeer, JaxPeer, KerasPeer, NumpyPeer, SklearnPeer]
BY_NAME = {peer.name: peer for peer in PEERS}


def installed(peer):
    """True when the peer's library can be imported here."""
    return importlib.util.find_spec(peer.module) is not None


def configure_threads(n_threads, peers):
    """Limit every thread pool the peers use to n_threads; call before any peer runs.

    The process's CPU affinity (set by matrix.py) is what bounds JAX: jaxlib sizes its pool
    from the CPUs it may run on, and XLA_FLAGS' --xla_cpu_multi_thread_eigen=false alone
    leaves it on every core. Returns what must stay referenced (threadpoolctl's limits).
    """
    names = {peer.module for peer in peers}
    if "torch" in names:
        import torch

        torch.set_num_threads(n_threads)
    if "keras" in names:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n_threads)
        tf.config.threading.set_inter_op_parallelism_threads(n_threads)
    if "jax" in names:
        import jax

        jax.config.update("jax_enable_x64", True)  # the float64 workload
        jax.config.update("jax_platforms", "cpu")
    if "sklearn" in names:
        import sklearn.neural_network  # noqa: F401  (loads its OpenMP runtime)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n_threads)
