"""scipy.sparse inputs: a CSR matrix checked and converted once, and batches of its rows.

A model's first layer runs on a CSR matrix's nonzeros (fastnaive._csr), so inputs of
100,000 columns at 1% density train without ever being densified, not even a batch. Any
object with `tocsr()` (scipy.sparse arrays and matrices, CSR, CSC, COO, ...) is accepted
wherever images are; fastnaive never imports SciPy's sparse module itself. A batch is a
CsrBatch: the matrix's arrays and the row numbers it takes, in order (no copy).
"""

import numpy as np

from fastnaive import _csr, _kernels
from fastnaive._validation import as_inputs

__all__ = ["as_model_inputs", "CsrInputs", "CsrBatch"]


def as_model_inputs(x, n_features, dtype, name="images"):
    """x checked and converted once: a C-contiguous (n, n_features) array of dtype, or, for a
    scipy.sparse matrix (anything with tocsr), a CsrBatch of all its rows."""
    if not isinstance(x, np.ndarray) and callable(getattr(x, "tocsr", None)):
        return CsrInputs(x, n_features, dtype, name).batch(None)
    return as_inputs(x, n_features, dtype, name=name)


class CsrInputs:
    """A CSR matrix of (n_samples, n_features) as data (the model's dtype) and int64 indices
    and indptr, checked once; batch(rows) is a CsrBatch of its rows."""

    def __init__(self, matrix, n_features, dtype, name="images"):
        shape = tuple(matrix.shape)
        if len(shape) != 2 or shape[1] != n_features or shape[0] < 1:
            raise ValueError(
                f"Expected {name} of shape (n_samples, {n_features}) with "
                f"n_samples >= 1. Received: {name}.shape={shape}"
            )
        csr = matrix.tocsr()
        if csr.dtype.kind not in "biuf":
            raise TypeError(
                f"Expected {name} of a real number dtype. Received: {name}.dtype={csr.dtype}"
            )
        self.data = np.ascontiguousarray(csr.data, dtype=dtype)
        self.indices = np.ascontiguousarray(csr.indices, dtype=np.intp)
        self.indptr = np.ascontiguousarray(csr.indptr, dtype=np.intp)
        _csr.check_csr(self.data, self.indices, self.indptr, n_features)
        self.shape = (csr.shape[0], n_features)
        self.dtype = self.data.dtype

    @property
    def arrays(self):
        """The arrays that define the matrix."""
        return self.data, self.indices, self.indptr

    def batch(self, rows):
        """The rows `rows` (an int64 array of row numbers; None: all), in that order."""
        return CsrBatch(self, np.arange(self.shape[0], dtype=np.intp) if rows is None else rows)


class CsrBatch:
    """Some rows of a CsrInputs, by number: what the first layer's CSR kernels take."""

    def __init__(self, inputs, rows):
        self.inputs, self.rows = inputs, rows
        self.shape = (rows.shape[0], inputs.shape[1])

    @property
    def dtype(self):
        return self.inputs.dtype

    @property
    def arrays(self):
        """The arrays that define the rows (for checksums)."""
        return (*self.inputs.arrays, self.rows)

    def __getitem__(self, rows):
        """The rows of a slice of this batch, in order (no copy)."""
        if not isinstance(rows, slice):
            raise TypeError(f"Expected a slice of rows. Received: {rows!r}")
        return CsrBatch(self.inputs, self.rows[rows])

    def __len__(self):
        return self.shape[0]

    def forward(self, W, b, out, n_threads):
        """out := X_rows @ W + b"""
        x = self.inputs
        _csr.csr_forward_checked(x.data, x.indices, x.indptr, self.rows, W, b, out, n_threads)

    def param_grad_call(self, delta, alpha, beta, dW, db, n_threads):
        """The kernel call (function, arguments) of
        dW := alpha X_rows.T @ delta + beta dW;  db := alpha sum_rows(delta) + beta db"""
        x = self.inputs
        arguments = (x.data, x.indices, x.indptr, self.rows, delta, alpha, beta, dW, db)
        return _csr.csr_param_grad_checked, (*arguments, n_threads)

    def max_abs(self):
        """An upper bound of |x_ij| over these rows: the largest over the whole matrix."""
        return _kernels.max_abs_checked(self.inputs.data)
