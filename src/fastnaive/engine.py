"""The planned step: every entry point trains, evaluates and predicts through a Step.

Design: a Step is built once per call (fit, evaluate_loss, predict) or kept per model for
the per-batch calls (loss_and_gradients, one_training_step), from the model, the largest
batch it will see, the inputs and the optimizer. Everything that can be decided once is
decided there, and nowhere else:
- buffers: each layer's outputs and deltas, the batch gather buffers, and one flat
  buffer [dW0, db0, ..., loss sum, correct count] whose views are the gradients, so that a
  gradient reducer (MPI's Allreduce) sends one message per step;
- kernels: the first layer runs on the inputs' nonzeros (fastnaive._sparse) when they are
  mostly zeros (MNIST: 81%), which is exact and, there, 2.5-3x faster than the dense GEMMs;
- threads: `threads()` is the thread policy of a call;
- the update: the optimizer's Update, bound once. When the optimizer declares a
  `gemm_scale` and no reducer is plugged in, the update runs inside each weight-gradient
  GEMM (W := W + s * X.T @ delta, after the input gradient has used the old W);
- the reducer hook: `reducer.reduce(flat)` runs between "gradients ready" and "update" and
  sums the flat buffer over processes in place; a reducer that also has
  `layer_ready(flat, lo, hi)` is told, during the backward pass and from the last layer to
  the first, as soon as a layer's gradients flat[lo:hi] are final, so that it can start
  reducing them while earlier layers are still being computed (reduce then completes).
Callers validate and convert inputs first (fastnaive.validation); a Step only slices its
preallocated arrays and calls the kernels, so a step in steady state allocates nothing.
"""

import contextlib
import math
import weakref

import numpy as np

from fastnaive import _blas, _kernels, _sparse
from fastnaive._memory import aligned_empty
from fastnaive.optimizers import Update

__all__ = ["Step", "step_for", "is_sparse"]

# Above this share of nonzeros the dense GEMMs win (measured: sparse is 1.2x faster at 0.5,
# 1.07x at 0.7, 8% slower on dense inputs).
SPARSE_MAX_DENSITY = 0.5
# The first layer's sparse products run on the calling thread (see Step.threads).
SPARSE_THREADS = 1
_blas_controller = None
# Per-batch entry points keep one Step per model, replaced when the model or batch outgrows it.
_cached_steps = weakref.WeakKeyDictionary()


def is_sparse(x):
    """True when x is zero enough for the first layer to run on its nonzeros."""
    return np.count_nonzero(x) <= SPARSE_MAX_DENSITY * x.size


def _signature(model):
    return tuple(
        (layer.input_size, layer.output_size, layer.activation) for layer in model.layers
    ), model.dtype


class Step:
    """One call's plan for `model` on batches of up to `capacity` samples like `x`.

    `training=False` leaves out what only training needs (hidden deltas, gradients).
    """

    def __init__(self, model, capacity, x=None, *, optimizer=None, reducer=None, training=True):
        self.model, self.capacity, self.reducer = model, capacity, reducer
        self.signature = _signature(model)
        dtype = model.dtype
        # outputs[l] is layer l's output (for a softmax layer, its logits); deltas[l] is the
        # loss gradient with respect to layer l's pre-activation.
        self.outputs = [np.empty((capacity, layer.output_size), dtype) for layer in model.layers]
        hidden = model.layers[:-1] if training else []  # evaluation needs only the loss's
        self.deltas = [aligned_empty((capacity, layer.output_size), dtype) for layer in hidden]
        self.deltas.append(aligned_empty((capacity, model.output_size), dtype))
        self.training = training
        self.gradients = self.flat = None
        if training:
            self.flat = aligned_empty(sum(w.size for w in model.weights) + 2, dtype)
            self.flat.fill(0)
            self.gradients = _views(self.flat, model.weights)
            # Layer i's gradients [dW_i, db_i] are flat[bounds[2 i]:bounds[2 i + 2]].
            self.bounds = np.cumsum([0] + [w.size for w in model.weights]).tolist()
        self.layer_ready = getattr(reducer, "layer_ready", None)
        self.n_features = model.input_size
        self.batch_inputs = self.batch_labels = None
        self.sparse_input = False
        self.row_groups = self.column_groups = None
        self.update = self.bound_weights = None
        if x is not None:
            self.use_inputs(x)
        if optimizer is not None:
            self.use_optimizer(optimizer)

    def fits(self, model, n_samples):
        """True when this Step serves `model` for a batch of n_samples."""
        return n_samples <= self.capacity and self.signature == _signature(model)

    def use_inputs(self, x):
        """Choose the first layer's kernels for inputs like x: on their nonzeros, or GEMMs."""
        sparse = is_sparse(x) and (self.capacity + 3) * self.n_features < 2**31  # int32 indices
        if sparse and self.row_groups is None:
            dtype = self.outputs[0].dtype
            self.row_groups = _sparse.group_buffers(self.capacity, self.n_features, dtype)
            if self.training:
                self.column_groups = _sparse.group_buffers(self.n_features, self.capacity, dtype)
        self.sparse_input = sparse

    def use_optimizer(self, optimizer):
        """Bind `optimizer` to the gradient buffers and the model's weights (checked once)."""
        if self.update is None or self.update.optimizer is not optimizer:
            self.bound_weights = self.model.weights
            self.update = Update(optimizer, self.gradients, self.bound_weights)

    def current_update(self):
        """The optimizer's Update, bound again if a layer's W or b was replaced by a new array
        (the optimizer's state follows the weight's position, not the array)."""
        weights = self.model.weights
        if any(a is not b for a, b in zip(weights, self.bound_weights)):
            self.bound_weights = weights
            self.update = Update(self.update.optimizer, self.gradients, weights)
        return self.update

    def threads(self):
        """The thread policy of a call: on sparse inputs BLAS runs on one thread, since the
        first layer's products run on the calling thread.

        OpenMP and OpenBLAS threads each spin a while after their work and chase each other
        on a small machine. Measured on 2 cores, an MNIST epoch of fit takes 0.40 s this way;
        with two OpenMP threads 0.27 s at best when they are bound to cores
        (OMP_PROC_BIND=true), but 0.52-0.55 s in about half the runs, and 6-7 s when both
        pools have two threads.
        """
        if not self.sparse_input:
            return contextlib.nullcontext()
        return _blas_pools().limit(limits=1)

    def gather(self, x, y, rows):
        """Return (x[rows], y[rows]) gathered into this Step's batch buffers."""
        if self.batch_inputs is None:
            self.batch_inputs = np.empty((self.capacity, self.n_features), x.dtype)
            self.batch_labels = np.empty(self.capacity, np.intp)
        n = rows.shape[0]
        _kernels.gather_rows_checked(x, rows, self.batch_inputs[:n])
        np.take(y, rows, out=self.batch_labels[:n])
        return self.batch_inputs[:n], self.batch_labels[:n]

    def forward(self, x, out=None):
        """Fill the layers' outputs for the rows of x; return the last one's (logits).

        With `out`, the last layer writes there instead of into the Step's buffer.
        """
        n = x.shape[0]
        a = x
        last = len(self.model.layers) - 1
        for i, (layer, buffer) in enumerate(zip(self.model.layers, self.outputs)):
            z = out if i == last and out is not None else buffer[:n]
            relu = layer.activation == "relu"
            if i == 0 and self.sparse_input:
                groups = _sparse.rows_of(self.row_groups, n)
                _sparse.group_rows_checked(a, *groups, SPARSE_THREADS)
                _sparse.sparse_forward_checked(*groups, layer.W, layer.b, relu, z, SPARSE_THREADS)
            else:
                _kernels.dense_forward_checked(a, layer.W, layer.b, relu, z)
            a = z
        return a

    def loss_gradient(self, y):
        """Return the mean softmax cross-entropy of the logits; put its gradient in deltas[-1]."""
        n = y.shape[0]
        return _kernels.softmax_crossentropy_checked(self.outputs[-1][:n], y, self.deltas[-1][:n])

    def backward(self, x, gemm_scale=None):
        """Back-propagate deltas[-1] through the layers.

        With gemm_scale None the weight gradients go to `gradients`; otherwise each layer is
        updated in place, W := W + gemm_scale * dW inside the weight-gradient GEMM, once its
        input gradient has used the old W.
        """
        n = x.shape[0]
        layers = self.model.layers
        for i in reversed(range(len(layers))):
            layer = layers[i]
            delta = self.deltas[i][:n]
            if layer.activation == "relu":
                _kernels.relu_backward_checked(self.outputs[i][:n], delta)
            if i > 0:
                _kernels.dense_input_grad_checked(delta, layer.W, self.deltas[i - 1][:n])
            if gemm_scale is None:
                alpha, beta = 1.0, 0.0
                dW, db = self.gradients[2 * i], self.gradients[2 * i + 1]
            else:
                alpha, beta, dW, db = gemm_scale, 1.0, layer.W, layer.b
            if i == 0 and self.sparse_input:
                _sparse.group_columns_checked(x, *self.column_groups, SPARSE_THREADS)
                _sparse.sparse_param_grad_checked(
                    *self.column_groups, delta, alpha, beta, dW, db, SPARSE_THREADS
                )
            else:
                inputs = self.outputs[i - 1][:n] if i > 0 else x
                _kernels.dense_param_grad_checked(inputs, delta, alpha, beta, dW, db)
            if self.layer_ready is not None and gemm_scale is None:
                self.layer_ready(self.flat, self.bounds[2 * i], self.bounds[2 * i + 2])

    def compute_gradients(self, x, y):
        """Return the batch's mean loss, with its gradients in `gradients`."""
        self.forward(x)
        loss = self.loss_gradient(y)
        self.backward(x)
        return loss

    def train(self, x, y, n_global=None):
        """One optimizer step on the batch; return (loss, correct predictions) before it.

        x, y are this process's rows of a batch of n_global (default: all of it): its loss and
        gradients are the batch means, summed over processes by the reducer. A non-finite
        loss leaves the weights as they were.
        """
        n = x.shape[0]
        n_global = n if n_global is None else n_global
        update = self.current_update()
        loss, correct = 0.0, 0
        if n:
            logits = self.forward(x)
            correct = _kernels.count_correct_checked(logits, y)
            loss = self.loss_gradient(y)
            if n != n_global:
                # loss_gradient divides by the local n; the batch mean divides by the global n.
                self.deltas[-1][:n] *= n / n_global
        if self.reducer is None:
            if not math.isfinite(loss):
                return loss, correct
            scale = update.gemm_scale
            self.backward(x, scale)
            if scale is None:
                update()
            else:
                update.fused()
            return loss, correct
        if n:
            self.backward(x)
        else:
            self.flat.fill(0)
            if self.layer_ready is not None:
                for i in reversed(range(len(self.model.layers))):
                    self.layer_ready(self.flat, self.bounds[2 * i], self.bounds[2 * i + 2])
        self.flat[-2], self.flat[-1] = loss * n, correct
        self.reducer.reduce(self.flat)
        loss, correct = float(self.flat[-2]) / n_global, int(round(float(self.flat[-1])))
        if math.isfinite(loss):
            update()
        return loss, correct

    def loss_and_correct(self, x, y):
        """Return the summed cross-entropy and the number of argmax hits over (x, y)."""
        total_loss, correct = 0.0, 0
        for start in range(0, x.shape[0], self.capacity):
            stop = min(start + self.capacity, x.shape[0])
            logits = self.forward(x[start:stop])
            correct += _kernels.count_correct_checked(logits, y[start:stop])
            total_loss += self.loss_gradient(y[start:stop]) * (stop - start)
        return total_loss, correct

    def predict(self, x, out):
        """out := the model's outputs for x (probabilities after a softmax last layer)."""
        for start in range(0, x.shape[0], self.capacity):
            stop = min(start + self.capacity, x.shape[0])
            self.forward(x[start:stop], out[start:stop])
        if self.model.layers[-1].activation == "softmax":
            _kernels.softmax_checked(out, out)
        return out


def step_for(model, x):
    """The Step kept for `model`'s per-batch calls, fitted to the batch x (grown if needed)."""
    step = _cached_steps.get(model)
    if step is None or not step.fits(model, x.shape[0]):
        capacity = max(x.shape[0], step.capacity if step is not None else 0)
        step = Step(model, capacity)
        _cached_steps[model] = step
    step.use_inputs(x)
    return step


def _views(flat, arrays):
    """Views of `flat` shaped like each of `arrays`, in order, laid end to end."""
    views, offset = [], 0
    for array in arrays:
        views.append(flat[offset : offset + array.size].reshape(array.shape))
        offset += array.size
    return views


def _blas_pools():
    """threadpoolctl's handle on the loaded BLAS libraries, SciPy's among them."""
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas.load()
        _blas_controller = ThreadpoolController().select(user_api="blas")
    return _blas_controller
