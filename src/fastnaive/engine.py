"""The training step on preallocated buffers: forward, softmax cross-entropy, backward.

Callers validate and convert inputs first (fastnaive._validation); everything
here only slices preallocated arrays and calls the kernels, so a step in steady
state allocates nothing. When the inputs are mostly zeros (MNIST: 81%), the
first layer's two products run on their nonzeros only (fastnaive._sparse),
which is exact and, on MNIST, 2.5-3x faster than the dense GEMMs.
"""
import contextlib

import numpy as np

from fastnaive import _blas, _kernels, _sparse
from fastnaive._memory import aligned_empty

__all__ = ["Workspace", "workspace_for", "is_sparse", "threads_for", "forward", "loss_gradient",
           "backpropagate", "loss_and_accuracy"]

# Above this share of nonzeros the dense GEMMs win (measured: sparse is 1.2x faster at 0.5,
# 1.07x at 0.7, 8% slower on dense inputs).
SPARSE_MAX_DENSITY = 0.5
# The first layer's sparse products run on the calling thread (see threads_for).
SPARSE_THREADS = 1
_controller = None


def _signature(model):
    return tuple((layer.input_size, layer.output_size, layer.activation) for layer in model.layers), \
        model.dtype


class Workspace:
    """Buffers for one model's step on batches of up to `capacity` samples."""

    def __init__(self, model, capacity):
        self.signature = _signature(model)
        self.capacity = capacity
        dtype = model.dtype
        # outputs[l] is layer l's output (for a softmax layer, its logits);
        # deltas[l] is the loss gradient with respect to layer l's pre-activation.
        self.outputs = [np.empty((capacity, layer.output_size), dtype) for layer in model.layers]
        self.deltas = [aligned_empty((capacity, layer.output_size), dtype)
                       for layer in model.layers]
        self.gradients = [np.empty_like(w) for w in model.weights]
        self.n_features = model.input_size
        self.batch_inputs = None
        self.batch_labels = None
        self.sparse_input = False
        self.row_groups = self.column_groups = None

    def use_sparse_input(self, sparse):
        """Run the first layer on the inputs' nonzeros (True) or as dense GEMMs (False)."""
        sparse = sparse and (self.capacity + 3) * self.n_features < 2**31  # int32 indices
        if sparse and self.row_groups is None:
            dtype = self.outputs[0].dtype
            self.row_groups = _sparse.group_buffers(self.capacity, self.n_features, dtype)
            self.column_groups = _sparse.group_buffers(self.n_features, self.capacity, dtype)
        self.sparse_input = sparse

    def gathered(self, x, y, rows):
        """Return (x[rows], y[rows]) gathered into this workspace's batch buffers."""
        if self.batch_inputs is None:
            self.batch_inputs = np.empty((self.capacity, self.n_features), x.dtype)
            self.batch_labels = np.empty(self.capacity, np.intp)
        n = rows.shape[0]
        _kernels.gather_rows_checked(x, rows, self.batch_inputs[:n])
        np.take(y, rows, out=self.batch_labels[:n])
        return self.batch_inputs[:n], self.batch_labels[:n]

    def fits(self, model, n_samples):
        """True when this workspace serves `model` for a batch of n_samples."""
        return n_samples <= self.capacity and self.signature == _signature(model)


def workspace_for(model, n_samples):
    """Return the model's cached workspace, replaced by a larger one when needed."""
    workspace = getattr(model, "_workspace", None)
    if workspace is None or not workspace.fits(model, n_samples):
        capacity = max(n_samples, workspace.capacity if workspace is not None else 0)
        workspace = Workspace(model, capacity)
        model._workspace = workspace
    return workspace


def is_sparse(x):
    """True when x is zero enough for the first layer to run on its nonzeros."""
    return np.count_nonzero(x) <= SPARSE_MAX_DENSITY * x.size


@contextlib.contextmanager
def threads_for(workspace):
    """For one training call on sparse inputs: the first layer runs on the calling thread and
    BLAS, left with the small products, on one thread too.

    OpenMP and OpenBLAS threads each spin a while after their work and chase each other on
    a small machine. Measured on 2 cores, an MNIST epoch of fit takes 0.40 s this way; with
    two OpenMP threads 0.27 s at best when they are bound to cores (OMP_PROC_BIND=true), but
    0.52-0.55 s in about half the runs, and 6-7 s when both pools have two threads.
    """
    if not workspace.sparse_input:
        yield
        return
    with _blas_pools().limit(limits=1):
        yield


def _blas_pools():
    """threadpoolctl's handle on the loaded BLAS libraries, SciPy's among them."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController
        _blas.load()
        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def forward(model, workspace, x):
    """Fill workspace.outputs for the rows of x; return the logits (n_samples, n_classes)."""
    n = x.shape[0]
    a = x
    for i, (layer, out) in enumerate(zip(model.layers, workspace.outputs)):
        z = out[:n]
        relu = layer.activation == "relu"
        if i == 0 and workspace.sparse_input:
            groups = _sparse.rows_of(workspace.row_groups, n)
            _sparse.group_rows_checked(a, *groups, SPARSE_THREADS)
            _sparse.sparse_forward_checked(*groups, layer.W, layer.b, relu, z, SPARSE_THREADS)
        else:
            _kernels.dense_forward_checked(a, layer.W, layer.b, relu, z)
        a = z
    return a


def loss_gradient(workspace, labels):
    """Return the mean softmax cross-entropy of the logits; put its gradient in deltas[-1]."""
    n = labels.shape[0]
    return _kernels.softmax_crossentropy_checked(workspace.outputs[-1][:n], labels,
                                                 workspace.deltas[-1][:n])


def backpropagate(model, workspace, x, learning_rate=None):
    """Back-propagate deltas[-1] through the layers.

    With learning_rate None the weight gradients go to workspace.gradients;
    otherwise each layer is updated in place, W -= learning_rate * dW inside the
    weight-gradient GEMM, once its input gradient has used the old W.
    """
    n = x.shape[0]
    for i in reversed(range(len(model.layers))):
        layer = model.layers[i]
        delta = workspace.deltas[i][:n]
        if layer.activation == "relu":
            _kernels.relu_backward_checked(workspace.outputs[i][:n], delta)
        if i > 0:
            _kernels.dense_input_grad_checked(delta, layer.W, workspace.deltas[i - 1][:n])
        if learning_rate is None:
            alpha, beta = 1.0, 0.0
            dW, db = workspace.gradients[2 * i], workspace.gradients[2 * i + 1]
        else:
            alpha, beta, dW, db = -learning_rate, 1.0, layer.W, layer.b
        if i == 0 and workspace.sparse_input:
            _sparse.group_columns_checked(x, *workspace.column_groups, SPARSE_THREADS)
            _sparse.sparse_param_grad_checked(*workspace.column_groups, delta, alpha, beta, dW, db,
                                              SPARSE_THREADS)
        else:
            inputs = workspace.outputs[i - 1][:n] if i > 0 else x
            _kernels.dense_param_grad_checked(inputs, delta, alpha, beta, dW, db)


def loss_and_accuracy(model, workspace, x, y):
    """Return the mean cross-entropy and the accuracy over (x, y), in chunks of the workspace."""
    total_loss, correct = 0.0, 0
    for start in range(0, x.shape[0], workspace.capacity):
        stop = min(start + workspace.capacity, x.shape[0])
        logits = forward(model, workspace, x[start:stop])
        correct += _kernels.count_correct_checked(logits, y[start:stop])
        total_loss += loss_gradient(workspace, y[start:stop]) * (stop - start)
    return total_loss / x.shape[0], correct / x.shape[0]
