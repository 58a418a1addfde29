"""A pure-NumPy reference for fastnaive: what each kernel and a whole training step compute.

It is readable documentation and the tests' oracle. Each kernel function has the
mathematics and argument order of its Cython wrapper (`fastnaive._kernels.*_checked`,
`fastnaive._blas.gemm_checked`) but returns new arrays instead of writing into
`_out` buffers. `forward`, `loss_and_gradients` and `sgd_step` do the book's
training step on a NaiveSequential's arrays the straightforward NumPy way: the
baseline that the fused Cython engine is measured against.

Arrays are C-contiguous float32 or float64 of the model's dtype; labels are
integer class indices.
"""

import numpy as np

__all__ = [
    "dense_forward",
    "relu_backward",
    "dense_input_grad",
    "dense_param_grad",
    "softmax",
    "softmax_crossentropy",
    "gather_rows",
    "gemm",
    "axpy",
    "forward",
    "loss_and_gradients",
    "sgd_step",
]


def dense_forward(X, W, b, relu):
    """Z = act(X @ W + b), act = relu if relu else identity."""
    Z = X @ W + b
    return np.maximum(Z, 0) if relu else Z


def relu_backward(Z, delta):
    """delta * (Z > 0), with Z = relu(.) the layer's output: zero wherever Z <= 0."""
    return np.where(Z > 0, delta, 0)


def dense_input_grad(delta, W):
    """dX = delta @ W.T"""
    return delta @ W.T


def dense_param_grad(X, delta):
    """dW = X.T @ delta;  db = sum_rows(delta)"""
    return X.T @ delta, delta.sum(axis=0)


def softmax(logits):
    """softmax(z)_j = exp(z_j - max(z)) / sum_k exp(z_k - max(z)), row by row, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(logits.dtype)


def softmax_crossentropy(logits, labels):
    """loss = mean_i(logsumexp(z_i) - z_i[y_i]);  grad = (softmax(z) - onehot(y)) / n.

    Computed in float64 with the row maximum subtracted before exp(), so no
    logit overflows. A label outside [0, n_classes) gives a NaN gradient row
    and a NaN loss, as the kernel does, instead of an index error.
    """
    z = np.asarray(logits, dtype=np.float64)
    n, n_classes = z.shape
    rows = np.flatnonzero((labels >= 0) & (labels < n_classes))
    shifted = z - z.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    losses = np.full(n, np.nan)
    losses[rows] = -log_probs[rows, labels[rows]]
    grad = np.full_like(z, np.nan)
    grad[rows] = np.exp(log_probs[rows])
    grad[rows, labels[rows]] -= 1
    return losses.mean(), (grad / n).astype(logits.dtype)


def gather_rows(src, rows):
    """out[i] = src[rows[i]], a NaN row where rows[i] is outside [0, len(src))."""
    out = np.full((len(rows), src.shape[1]), np.nan, dtype=src.dtype)
    valid = (rows >= 0) & (rows < src.shape[0])
    out[valid] = src[rows[valid]]
    return out


def gemm(A, B, C, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """alpha * op(A) @ op(B) + beta * C, op(X) = X.T when trans_x; C is not read when beta = 0."""
    product = alpha * ((A.T if trans_a else A) @ (B.T if trans_b else B))
    return product if beta == 0 else product + beta * C


def axpy(x, y, alpha):
    """alpha * x + y"""
    return alpha * x + y


def forward(model, x):
    """a_l = act_l(a_(l-1) @ W_l + b_l), a_(-1) = x; return [a_0, a_1, ...], logits for softmax."""
    outputs = []
    for layer in model.dense_layers:
        x = dense_forward(x, layer.W, layer.b, layer.activation == "relu")
        outputs.append(x)
    return outputs


def loss_and_gradients(model, x, y):
    """Return (mean softmax cross-entropy of the last outputs, [dW0, db0, dW1, db1, ...]).

    The last layer's outputs are the logits: for a softmax layer its
    pre-softmax outputs, so the loss is the cross-entropy of its probabilities.
    The gradients follow by the chain rule, in `model.weights` order.
    """
    outputs = forward(model, x)
    loss, delta = softmax_crossentropy(outputs[-1], y)
    gradients = [None] * (2 * len(model.dense_layers))
    for i in reversed(range(len(model.dense_layers))):
        layer = model.dense_layers[i]
        if layer.activation == "relu":
            delta = relu_backward(outputs[i], delta)
        inputs = outputs[i - 1] if i > 0 else x
        gradients[2 * i], gradients[2 * i + 1] = dense_param_grad(inputs, delta)
        if i > 0:
            delta = dense_input_grad(delta, layer.W)
    return loss, gradients


def sgd_step(model, x, y, learning_rate):
    """w := w - learning_rate * dw for every weight, in place; return the loss before the update."""
    loss, gradients = loss_and_gradients(model, x, y)
    for weight, gradient in zip(model.weights, gradients):
        weight -= learning_rate * gradient
    return loss
