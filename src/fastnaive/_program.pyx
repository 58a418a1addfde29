# Design: a Step's sweeps over its layers (fastnaive.engine), each one call from Python. A
# kernel's checked `def` wrapper costs 1-2 us a call (argument parsing, a buffer acquired
# per array, the dtype's dispatch) against under 1 us of arithmetic on a small layer, and a
# step calls a dozen kernels or more. A Program is built once per Step from the Step's
# buffers and the model's layers, checks them then, and holds them as memoryviews of this
# module (taking one back costs a type check, not a buffer acquisition); a call checks only
# what arrives with it (the batch x, its row count n, an output buffer) and slices the held
# views to n rows. Every decision stays with the Step: which kernels the first layer runs
# (FIRST_DENSE, FIRST_SPARSE, or FIRST_EXTERNAL, where the caller computes the first layer's
# products, as for a scipy.sparse batch) and where the sparse kernels cut the features, the
# activation codes, dropout, which layers are penalised. The lists the grouping kernels
# write are in range by construction, so they reach the sparse products unchecked. The GIL
# is released around each kernel.
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport isfinite

import numpy as np

from fastnaive._memory import aligned_empty

from fastnaive._activations cimport (ELU_CODE, LINEAR_CODE, RELU_CODE, activate,
                                     activation_backward, dropout)
from fastnaive._blas cimport axpy, load_blas
from fastnaive._kernels cimport (RULE_ADAM, Rule, change_bound, check_slots, dense_forward,
                                 dense_input_grad, dense_param_grad, largest_bound, max_abs,
                                 max_abs_on, read_rule, scan)
from fastnaive._losses cimport (LOSS_BLOCKS, LossBlocks, blocks_total, check_loss,
                                checked_loss_and_hits, loss_block, loss_blocks, loss_labels,
                                loss_targets)
from fastnaive._sparse cimport (NARROW_MAX, add_parts_rows, checked_cut, feature_parts,
                                group_and_forward, group_lines, n_groups, narrow_forward,
                                narrow_forward_rows, narrow_in_parallel, narrow_input_grad,
                                narrow_input_rows, narrow_param_grad, sparse_forward,
                                sparse_param_grad, starts_length)

from fastnaive._sparse import pack_buffer

# How the first layer multiplies its inputs: GEMMs, the sparse kernels on the inputs'
# nonzeros, or the caller (who then also runs its activation's product and gradient).
FIRST_DENSE, FIRST_SPARSE, FIRST_EXTERNAL = 0, 1, 2

# What a forward sweep left for the head pass to do (forward_sweep's return): nothing, or
# the sparse first layer's partial sums to add to its outputs, with ReLU or without.
cdef enum:
    PARTS_ADDED = 0
    PARTS_PENDING = 1
    PARTS_PENDING_RELU = 2


# Below this many elements, backward_rows runs on the calling thread (a parallel region costs
# about 1 us; _kernels' element passes take the same limit); above, in at most
# BACKWARD_BLOCKS blocks of rows.
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 18
cdef enum:
    BACKWARD_BLOCKS = 64


cdef object held_view(object array, bint is_double):
    """array as a C-contiguous memoryview of this module, of its dtype and 1 or 2 dimensions
    (None stays None)"""
    cdef float[::1] f1
    cdef double[::1] d1
    cdef float[:, ::1] f2
    cdef double[:, ::1] d2
    if array is None:
        return None
    if array.ndim == 1 and is_double:
        d1 = array
        return d1
    if array.ndim == 1:
        f1 = array
        return f1
    if is_double:
        d2 = array
        return d2
    f2 = array
    return f2


cdef object index_view(object array):
    cdef int[::1] i = array
    return i


cdef inline void activate_rows(int code, const floating[:, ::1] Z,
                               floating[:, ::1] A_out) noexcept nogil:
    """A := act_code(Z), row-contiguous arrays of the same shape"""
    if Z.shape[0] and Z.shape[1]:
        activate(code, &Z[0, 0], &A_out[0, 0], Z.shape[0] * Z.shape[1])


cdef class Program:
    """The forward pass, backward pass and fused update of a Step's layers, compiled.

    layers: the model's dense layers (W, b and l2 read from them); dropouts: each layer's
    Dropout or None; codes / head_codes: each layer's activation code in training and with
    the head applied; outputs, deltas, dropped, pre: the Step's buffers per layer (None where
    absent), `capacity` rows each; gradients: [dW0, db0, ...] or None; first: FIRST_*;
    row_groups / column_groups: the sparse kernels' buffers (fastnaive._sparse.group_buffers)
    for FIRST_SPARSE; offsets: None, or for FIRST_SPARSE the first layer's per-feature
    offsets (n_features,), read at each call: its kernels run on x's distances from them,
    which the grouping computes as it reads x (x holds the inputs); narrow:
    per layer, True where its products run on the narrow kernels (fastnaive._sparse.narrow_*,
    at most NARROW_MAX outputs) rather than the BLAS; cut: for FIRST_SPARSE, where the
    sparse kernels' second part of the features starts (fastnaive._sparse.part_bounds; None:
    the middle); hidden_groups: per layer, None, or for a hidden layer whose training
    products may run on its inputs' nonzeros (the sparse kernels), (row groups from
    group_buffers(capacity, its inputs, dtype, by_rows=True), column groups from
    group_buffers(its inputs, capacity, dtype, by_rows=False), delta_copy as the first
    layer's: None or (capacity, > its outputs), and None or the input gradient's row groups
    from group_buffers(capacity, its outputs, dtype, by_rows=True)); in a training step, such
    a layer's forward groups its inputs by rows and takes those kernels when at most
    hidden_densities[0] of them are nonzero, its weight gradient by columns and at most
    hidden_densities[1], its input gradient (where it has the groups) delta by rows where at
    most hidden_densities[2] of delta is, the GEMMs otherwise.
    """

    cdef readonly Py_ssize_t capacity, n_layers, n_features
    cdef readonly int first
    cdef bint is_double, trains
    cdef list layers, dropouts, arrays, weights, biases, outputs, deltas, dropped, pre, grads
    cdef int[::1] codes, head_codes, narrow
    cdef object row_starts, row_index, row_quads, column_starts, column_index, column_quads
    # FIRST_SPARSE: the sums of X @ W over the second part of the features (sparse_forward);
    # with offsets (held: shifted), the inputs' distances from them are what the groups
    # hold, each part's offsets @ W, and delta's column sums (the weight gradient's offset
    # term).
    cdef object partial, offsets, offset_sums, delta_sums
    # FIRST_SPARSE: where X @ W copies W's slabs (sparse_forward's pack).
    cdef object pack
    # FIRST_SPARSE training: where the weight gradient copies delta to read it faster
    # (sparse_param_grad's padded; empty: it reads delta).
    cdef object delta_copy
    # Where the GEMM layers compute blocks of columns apart (dense_forward's spare).
    cdef object spare_array
    cdef void* spare
    cdef readonly bint shifted
    cdef readonly Py_ssize_t cut
    # The state arrays bound (bind_state), flat, and the address of each one's first element;
    # the state last bound where it was a tuple (of tuples: not checked again when given
    # again), and its arrays per weight.
    cdef list state_arrays
    cdef size_t[::1] state_pointers
    cdef object held_state
    cdef Py_ssize_t held_per_array
    # The input whose column groups the last training forward made with its row groups
    # (its first element's address and its rows; NULL: none), for param_grad to use.
    cdef const void* columns_of
    cdef Py_ssize_t columns_rows
    # max |input| and max |delta| of each layer as the passes found them while writing them,
    # -1 where unknown: bound_sweep reads them instead of the arrays. The first layer's input
    # is measured by a training forward of FIRST_SPARSE as it groups x's rows (its x is
    # columns_of's); the hidden layers' by the input gradient of the layer above, narrow or
    # dense (see backward_sweep). A forward pass forgets them all, a backward pass those it
    # makes.
    cdef double[::1] input_peaks, delta_peaks
    # Per layer, None where its products are the GEMMs' (or the first layer's kernels), else
    # its inputs' row groups and column groups (starts, index, quads), the sums over the
    # second part of its inputs and their offset sums (sparse_forward's partial and
    # offset_sums, (parts, m) as it takes them), delta's copy (empty: delta read), and the
    # cut of its inputs into parts; with the shares of nonzeros above which the forward's
    # and the weight gradient's GEMMs run all the same. The inputs are read as they are
    # (empty offsets), so the offset sums and delta's column sums (one empty vector for
    # every layer) go unused. Each forward copies W's slabs into the layer's pack.
    cdef list hidden_rows, hidden_columns, hidden_partials, hidden_offset_sums, hidden_copies
    cdef list hidden_packs
    cdef Py_ssize_t[::1] hidden_cuts
    cdef readonly double forward_density, gradient_density, input_density
    # Per layer, None, or for a hidden layer whose input gradient may run on its deltas'
    # nonzeros (a ReLU's zeros): the row groups of delta (starts, index, quads) and
    # sparse_forward's partial, offset_sums, pack and zero bias for delta @ W.T; with the
    # cut of delta's columns into parts. Where at most input_density of delta is nonzero,
    # the input gradient runs the sparse forward kernels on delta's rows, W's slabs
    # transposed into the pack as they are copied.
    cdef list hidden_inputs
    cdef Py_ssize_t[::1] hidden_input_cuts
    cdef object no_offsets, no_delta_sums

    def __init__(self, layers, dropouts, codes, head_codes, outputs, deltas, dropped, pre,
                 gradients=None, first=FIRST_DENSE, row_groups=None, column_groups=None,
                 narrow=None, offsets=None, cut=None, delta_copy=None, hidden_groups=None,
                 hidden_densities=(0.0, 0.0, 0.0)):
        cdef float[::1] spare_f
        cdef double[::1] spare_d
        self.n_layers = len(layers)
        self.is_double = outputs[0].dtype == np.float64
        self.capacity = outputs[0].shape[0]
        self.n_features = layers[0].W.shape[0]
        self.first = first
        if first not in (FIRST_DENSE, FIRST_SPARSE, FIRST_EXTERNAL):
            raise ValueError(f"Expected first in (0, 1, 2). Received: first={first!r}")
        if not (len(dropouts) == len(codes) == len(head_codes) == len(outputs) == len(deltas)
                == len(dropped) == len(pre) == self.n_layers):
            raise ValueError("Expected one entry per layer in every list. Received: "
                             f"{self.n_layers} layers, {len(deltas)} deltas")
        self.layers, self.dropouts = list(layers), list(dropouts)
        self.input_peaks = np.full(self.n_layers, -1.0)
        self.delta_peaks = np.full(self.n_layers, -1.0)
        self.codes = np.asarray(codes, np.intc)
        self.head_codes = np.asarray(head_codes, np.intc)
        self.narrow = np.asarray(narrow if narrow is not None else [False] * self.n_layers,
                                 np.intc)
        if self.narrow.shape[0] != self.n_layers:
            raise ValueError(f"Expected one narrow flag per layer. Received: "
                             f"{self.narrow.shape[0]} for {self.n_layers} layers")
        self.arrays = [a for layer in layers for a in (layer.W, layer.b)]
        self.weights = [held_view(layer.W, self.is_double) for layer in layers]
        self.biases = [held_view(layer.b, self.is_double) for layer in layers]
        self.outputs = [held_view(a, self.is_double) for a in outputs]
        self.deltas = [held_view(a, self.is_double) for a in deltas]
        self.trains = gradients is not None and all(d is not None for d in deltas)
        self.dropped = [held_view(a, self.is_double) for a in dropped]
        self.pre = [held_view(a, self.is_double) for a in pre]
        self.grads = None
        if gradients is not None:
            self.grads = [held_view(g, self.is_double) for g in gradients]
        # The GEMM layers' (dense_forward's and dense_input_grad's) blocks of columns are
        # computed apart: room for the widest product, `capacity` rows of it.
        width = 0
        for i, layer in enumerate(layers):
            if self.narrow[i]:
                continue
            if i or first == FIRST_DENSE:
                width = max(width, layer.W.shape[1])  # its output
            if i:
                width = max(width, layer.W.shape[0])  # its input gradient
        self.spare = NULL
        if width and self.capacity:
            self.spare_array = aligned_empty(self.capacity * width, outputs[0].dtype)
            if self.is_double:
                spare_d = self.spare_array
                self.spare = &spare_d[0]
            else:
                spare_f = self.spare_array
                self.spare = &spare_f[0]
        k = self.n_features
        for i, layer in enumerate(layers):
            m = layer.W.shape[1]
            shapes = [(layer.W.shape[0], k), (layer.b.shape[0], m),
                      (outputs[i].shape, (self.capacity, m))]
            for a in (deltas[i], dropped[i], pre[i]):
                if a is not None:
                    shapes.append((a.shape, (self.capacity, m)))
            if gradients is not None:
                shapes += [(gradients[2 * i].shape, layer.W.shape),
                           (gradients[2 * i + 1].shape, layer.b.shape)]
            if self.narrow[i] and m > NARROW_MAX:
                raise ValueError(f"Expected narrow layers of at most {NARROW_MAX} outputs. "
                                 f"Received: layer {i} of {m}")
            if not 0 <= codes[i] <= ELU_CODE or not 0 <= head_codes[i] <= ELU_CODE:
                raise ValueError(f"Expected activation codes in [0, {ELU_CODE}]. Received: "
                                 f"codes[{i}]={codes[i]}, head_codes[{i}]={head_codes[i]}")
            for received, expected in shapes:
                if received != expected:
                    raise ValueError(f"Expected layer {i}'s buffers to agree with W "
                                     f"{layer.W.shape} and {self.capacity} rows. Received: "
                                     f"{received} for {expected}")
            k = m
        if first == FIRST_SPARSE:
            self.row_starts, self.row_index, self.row_quads = (
                index_view(row_groups[0]), index_view(row_groups[1]),
                held_view(row_groups[2], self.is_double))
            if gradients is not None:
                self.column_starts, self.column_index, self.column_quads = (
                    index_view(column_groups[0]), index_view(column_groups[1]),
                    held_view(column_groups[2], self.is_double))
            n_features = self.n_features
            m = layers[0].W.shape[1]
            self.partial = held_view(
                aligned_empty((self.capacity, m) if feature_parts(n_features) > 1 else (0, m),
                              outputs[0].dtype), self.is_double)
            rows_fit = (len(row_groups[0]) == starts_length(self.capacity, n_features, True)
                        and min(len(row_groups[1]), len(row_groups[2]))
                        >= n_groups(self.capacity) * n_features)
            columns_fit = gradients is None or (
                len(column_groups[0]) == starts_length(n_features, self.capacity, False)
                and min(len(column_groups[1]), len(column_groups[2]))
                >= n_groups(n_features) * self.capacity)
            if not (rows_fit and columns_fit):
                raise ValueError("Expected row_groups and column_groups from group_buffers("
                                 f"{self.capacity}, {n_features}, dtype, by_rows=True) and "
                                 f"group_buffers({n_features}, {self.capacity}, dtype, "
                                 "by_rows=False). Received: other sizes")
            if offsets is not None and offsets.shape != (n_features,):
                raise ValueError(f"Expected offsets of shape ({n_features},). Received: "
                                 f"{offsets.shape}")
            self.cut = checked_cut(n_features, cut)
            self.shifted = offsets is not None
            self.offsets = held_view(offsets if self.shifted else np.empty(0, outputs[0].dtype),
                                     self.is_double)
            self.offset_sums = held_view(np.empty((feature_parts(n_features), m),
                                                  outputs[0].dtype), self.is_double)
            self.delta_sums = held_view(np.empty(m, outputs[0].dtype), self.is_double)
            self.pack = held_view(pack_buffer(n_features, m, outputs[0].dtype), self.is_double)
            if delta_copy is None:
                delta_copy = np.empty((0, 0), outputs[0].dtype)
            elif not (delta_copy.ndim == 2 and delta_copy.shape[0] == self.capacity
                      and delta_copy.shape[1] > m and delta_copy.dtype == outputs[0].dtype):
                raise ValueError(f"Expected delta_copy None or ({self.capacity}, > {m}) of "
                                 f"dtype {outputs[0].dtype}. Received: delta_copy.shape="
                                 f"{delta_copy.shape}, dtype={delta_copy.dtype}")
            self.delta_copy = held_view(delta_copy, self.is_double)
        elif offsets is not None or cut is not None or delta_copy is not None:
            raise ValueError("Expected offsets, cut and delta_copy only with "
                             f"first=FIRST_SPARSE. Received: first={first}")
        self.bind_hidden_groups(hidden_groups, hidden_densities, outputs[0].dtype)
        load_blas()

    cdef int bind_hidden_groups(self, hidden_groups, hidden_densities, dtype) except -1:
        cdef Py_ssize_t i, k, m
        cdef list empty = [None] * self.n_layers
        self.hidden_rows, self.hidden_columns = list(empty), list(empty)
        self.hidden_partials, self.hidden_copies = list(empty), list(empty)
        self.hidden_offset_sums, self.hidden_packs = list(empty), list(empty)
        self.hidden_cuts = np.zeros(self.n_layers, np.intp)
        self.hidden_inputs = list(empty)
        self.hidden_input_cuts = np.zeros(self.n_layers, np.intp)
        self.no_offsets = held_view(np.empty(0, dtype), self.is_double)
        self.no_delta_sums = held_view(np.empty(0, dtype), self.is_double)
        shares = tuple(float(share) for share in hidden_densities)
        if not (len(shares) == 3 and all(0 <= share <= 1 for share in shares)):
            raise ValueError(f"Expected hidden_densities, three shares in [0, 1]. Received: "
                             f"hidden_densities={hidden_densities!r}")
        self.forward_density, self.gradient_density, self.input_density = shares
        if hidden_groups is None:
            return 0
        if len(hidden_groups) != self.n_layers:
            raise ValueError(f"Expected one hidden_groups entry per layer. Received: "
                             f"{len(hidden_groups)} for {self.n_layers} layers")
        for i, entry in enumerate(hidden_groups):
            if entry is None:
                continue
            if i == 0 or self.narrow[i] or not self.trains:
                raise ValueError("Expected hidden_groups only for the hidden layers of a "
                                 "training Program that run GEMMs. Received: an entry for "
                                 f"layer {i}")
            rows, columns, copy, inputs = entry
            k, m = self.layers[i].W.shape
            if not (len(rows[0]) == starts_length(self.capacity, k, True)
                    and min(len(rows[1]), len(rows[2])) >= n_groups(self.capacity) * k
                    and len(columns[0]) == starts_length(k, self.capacity, False)
                    and min(len(columns[1]), len(columns[2])) >= n_groups(k) * self.capacity
                    and (copy is None or (copy.ndim == 2 and copy.shape[0] == self.capacity
                                          and copy.shape[1] > m and copy.dtype == dtype))):
                raise ValueError(f"Expected layer {i}'s hidden_groups from group_buffers("
                                 f"{self.capacity}, {k}, dtype, by_rows=True) and "
                                 f"group_buffers({k}, {self.capacity}, dtype, by_rows=False) "
                                 f"and a delta copy None or ({self.capacity}, > {m}). "
                                 "Received: other sizes")
            self.hidden_rows[i], self.hidden_columns[i] = (
                (index_view(groups[0]), index_view(groups[1]),
                 held_view(groups[2], self.is_double)) for groups in (rows, columns))
            self.hidden_partials[i] = held_view(
                aligned_empty((self.capacity if feature_parts(k) > 1 else 0, m), dtype),
                self.is_double)
            self.hidden_offset_sums[i] = held_view(np.empty((feature_parts(k), m), dtype),
                                                   self.is_double)
            self.hidden_copies[i] = held_view(
                copy if copy is not None else np.empty((0, 0), dtype), self.is_double)
            self.hidden_packs[i] = held_view(pack_buffer(k, m, dtype), self.is_double)
            self.hidden_cuts[i] = checked_cut(k, None)
            if inputs is not None:
                self.bind_hidden_inputs(i, inputs, dtype)
        return 0

    cdef int bind_hidden_inputs(self, Py_ssize_t i, rows, dtype) except -1:
        """Layer i's input gradient buffers (see hidden_groups), checked"""
        cdef Py_ssize_t k = self.layers[i].W.shape[0], m = self.layers[i].W.shape[1]
        if not (len(rows[0]) == starts_length(self.capacity, m, True)
                and min(len(rows[1]), len(rows[2])) >= n_groups(self.capacity) * m
                and rows[2].dtype == dtype):
            raise ValueError(f"Expected layer {i}'s input gradient groups from group_buffers("
                             f"{self.capacity}, {m}, dtype, by_rows=True). Received: other "
                             "sizes")
        self.hidden_inputs[i] = (
            index_view(rows[0]), index_view(rows[1]), held_view(rows[2], self.is_double),
            held_view(aligned_empty((self.capacity if feature_parts(m) > 1 else 0, k), dtype),
                      self.is_double),
            held_view(np.empty((feature_parts(m), k), dtype), self.is_double),
            # The forward's pack where it is as large: each product copies its slabs anew.
            self.hidden_packs[i] if k == m else held_view(pack_buffer(m, k, dtype),
                                                          self.is_double),
            held_view(np.zeros(k, dtype), self.is_double))
        self.hidden_input_cuts[i] = checked_cut(m, None)
        return 0

    def uses(self, list layers):
        """True when `layers` hold the W and b arrays this Program was built on."""
        cdef Py_ssize_t i
        if len(layers) != self.n_layers:
            return False
        for i in range(self.n_layers):
            if layers[i].W is not self.arrays[2 * i] or layers[i].b is not self.arrays[2 * i + 1]:
                return False
        return True

    def holds(self, list arrays):
        """True when `arrays` are the W and b arrays this Program was built on, in the order
        [W0, b0, W1, ...] (uses' test for a list of arrays, such as an Update's, where uses
        reads the layers' own: a Step makes its Program current with uses, then checks its
        Update with holds)."""
        cdef Py_ssize_t i
        if len(arrays) != 2 * self.n_layers:
            return False
        for i in range(2 * self.n_layers):
            if arrays[i] is not self.arrays[i]:
                return False
        return True

    cdef int check(self, x, Py_ssize_t n, Py_ssize_t first_row, bint training) except -1:
        if training and not self.trains:
            raise ValueError("Expected a Program with every layer's deltas and gradients. "
                             "Received: one built without them")
        if not 0 <= n <= self.capacity:
            raise ValueError(f"Expected n in [0, {self.capacity}]. Received: n={n}")
        if first_row < 0:
            raise ValueError(f"Expected first_row >= 0. Received: first_row={first_row}")
        if self.first != FIRST_EXTERNAL and (x is None or x.shape[0] != n
                                             or x.shape[1] != self.n_features):
            raise ValueError(f"Expected x of shape ({n}, {self.n_features}). Received: "
                             f"x.shape={None if x is None else x.shape}")
        return 0

    def forward(self, x, Py_ssize_t n, bint training=False, bint head=False,
                Py_ssize_t first_row=0, long long iteration=0, out=None, int n_threads=1):
        """Fill the layers' outputs for the n rows of x (forward of fastnaive.engine.Step);
        with FIRST_EXTERNAL, x is unused and the first layer's product is already in its
        output (its pre-activation where it has one). A training forward of FIRST_SPARSE
        groups x's columns for the weight gradient as well: the backward passes that follow
        on the same array x use those groups, so x must not change in between."""
        self.check(x, n, first_row, False)
        m = self.outputs[self.n_layers - 1].shape[1]
        if out is not None and (out.shape[0] != n or out.shape[1] != m):
            raise ValueError(f"Expected out of shape ({n}, {m}). Received: out.shape={out.shape}")
        if self.first == FIRST_EXTERNAL:
            x = None
        if self.is_double:
            forward_sweep[double](self, x, n, training, head, first_row, iteration, out,
                                  out is not None, max(n_threads, 1), self.n_layers, False)
        else:
            forward_sweep[float](self, x, n, training, head, first_row, iteration, out,
                                 out is not None, max(n_threads, 1), self.n_layers, False)

    def backward(self, x, Py_ssize_t n, bint gradients, Py_ssize_t first_row=0,
                 long long iteration=0, layer_ready=None, flat=None, bounds=None,
                 int n_threads=1):
        """Back-propagate deltas[-1] from the last layer to the first (backward of
        fastnaive.engine.Step): each layer's deltas, and with `gradients` its weight
        gradients (the first layer's only if it is not FIRST_EXTERNAL), after which
        layer_ready(flat, bounds[2 i], bounds[2 i + 2]) is called if given."""
        self.check(x, n, first_row, True)
        if self.first == FIRST_EXTERNAL:
            x = None
        if self.is_double:
            backward_sweep[double](self, x, n, gradients, first_row, iteration, layer_ready,
                                   flat, bounds, max(n_threads, 1), self.n_layers - 1, False)
        else:
            backward_sweep[float](self, x, n, gradients, first_row, iteration, layer_ready,
                                  flat, bounds, max(n_threads, 1), self.n_layers - 1, False)

    def train(self, x, Py_ssize_t n, int loss_code, targets, sample_weight, double loss_scale,
              double penalty, Py_ssize_t first_row, long long iteration, scale,
              double weight_bound, double input_bound, int n_threads=1):
        """A training step's passes before its update (Step.train), in one call: forward(x,
        n, training=True, ...), the loss `loss_code` of the last outputs against `targets`
        (fastnaive._losses.loss_and_hits, scaled by loss_scale, with sample_weight or None)
        into the last deltas; then, unless that loss plus `penalty` is not finite, backward
        without gradients and the update's bound: fused_bound(scale) or, with scale None,
        gradient_bound. Return (loss + penalty, hits, bound), bound None after a loss that
        is not finite. Under a narrow linear head, the head's product, the loss and the
        head's input gradient are one pass over the batch's rows (head_pass: the same bits),
        so that input gradient is written whatever the loss."""
        self.check(x, n, first_row, True)
        self.check_first_own()
        return self.passes(x, n, loss_code, targets, sample_weight, loss_scale, penalty,
                           first_row, iteration, scale, weight_bound, input_bound, n_threads)

    cdef int check_first_own(self) except -1:
        """Raise unless this Program computes its first layer's products (train's, apply_rule's)."""
        if self.first == FIRST_EXTERNAL:
            raise ValueError("Expected a Program that computes its first layer's products. "
                             "Received: first=FIRST_EXTERNAL")
        return 0

    cdef tuple passes(self, x, Py_ssize_t n, int loss_code, targets, sample_weight,
                      double loss_scale, double penalty, Py_ssize_t first_row,
                      long long iteration, scale, double weight_bound, double input_bound,
                      int n_threads):
        """train's passes and bound (train_sweep), its arguments checked"""
        if self.is_double:
            return train_sweep[double](self, x, n, loss_code, targets, sample_weight,
                                       loss_scale, penalty, first_row, iteration, scale,
                                       weight_bound, input_bound, max(n_threads, 1))
        return train_sweep[float](self, x, n, loss_code, targets, sample_weight, loss_scale,
                                  penalty, first_row, iteration, scale, weight_bound,
                                  input_bound, max(n_threads, 1))

    def weight_bound(self, int n_threads=1):
        """max |w| over every layer's W and b, the overflow guard's bound of the weights (inf
        when any is NaN or infinite), in one call (a large W on n_threads)."""
        if self.is_double:
            return weights_peak[double](self, 0, max(n_threads, 1))
        return weights_peak[float](self, 0, max(n_threads, 1))

    def fused_bound(self, x, Py_ssize_t n, double scale, double weight_bound,
                    double input_bound):
        """The largest magnitude apply(x, n, scale) can leave in a weight or reach in its
        GEMM's sums, from the largest inputs and deltas (Step.fused_bound). input_bound
        bounds max |x|; where the training forward pass grouped this x (FIRST_SPARSE), the
        largest |x| it measured stands in if smaller (input_bound may then be inf)."""
        self.check(x, n, 0, True)
        if self.is_double:
            return bound_sweep[double](self, x, n, scale, weight_bound, input_bound, False)
        return bound_sweep[float](self, x, n, scale, weight_bound, input_bound, False)

    def gradient_bound(self, x, Py_ssize_t n, double weight_bound, double input_bound):
        """An upper bound of |g| over every layer's weight gradient X.T @ delta + 2 l2 W and
        bias gradient, from the largest inputs and deltas (what apply_rule feeds its rule);
        input_bound as fused_bound's."""
        self.check(x, n, 0, True)
        if self.is_double:
            return bound_sweep[double](self, x, n, 0, weight_bound, input_bound, True)
        return bound_sweep[float](self, x, n, 0, weight_bound, input_bound, True)

    def apply(self, x, Py_ssize_t n, double scale, int n_threads=1):
        """W := (1 + 2 scale l2) W + scale X.T @ delta, b := b + scale sum_rows(delta) in
        every layer (the first one's only if it is not FIRST_EXTERNAL), from the last layer
        to the first; a penalised layer's bias step goes through its gradient buffer."""
        self.check(x, n, 0, True)
        self.step_scale(x, n, scale, self.penalties(), n_threads)

    def apply_rule(self, x, Py_ssize_t n, tuple rule, state, int n_threads=1):
        """An optimizer's step on every layer, fused into the weight-gradient kernels: each
        block of a layer's gradients X.T @ delta + 2 l2 W and sum_rows(delta), written to
        the gradient buffers, is stepped by `rule` in the thread that produced it, while it
        is in cache. rule: (kind, learning_rate, momentum, alpha, 1 - beta_1, 1 - beta_2,
        epsilon), kind one of fastnaive._kernels' *_RULE (Optimizer.element_rule); state:
        per weight array [W0, b0, W1, ...], its state arrays (one for momentum, two for Adam),
        flat, of its size and dtype; a tuple of tuples, given again, is not checked again.
        Not for FIRST_EXTERNAL (the caller's first layer)."""
        cdef Rule r
        self.check(x, n, 0, True)
        self.check_first_own()
        read_rule(rule, &r, False)
        self.bind_state(state, 2 if r.kind == RULE_ADAM else 1)
        self.step_rule(x, n, r, self.penalties(), n_threads)

    def train_and_update(self, x, Py_ssize_t n, int loss_code, targets, sample_weight,
                         double loss_scale, double penalty, Py_ssize_t first_row,
                         long long iteration, scale, double weight_bound, double input_bound,
                         int n_threads, tuple rule, state, double[::1] slots, double limit,
                         long long[::1] counter not None, long long[::1] step_counter not None):
        """A training step in one call, its update included where its bound allows: train's
        passes (the same arguments), then, unless the loss is not finite, the step's bound:
        with rule None (gemm_scale's step, scale not None) fused_bound's; else the largest of
        weight_bound + the change and the state that change_bound (fastnaive._kernels) finds
        for rule (Optimizer.element_rule's) on the gradient bound, slots (Update.slot_bounds)
        advanced. Below `limit`, the step runs (apply(x, n, scale) or apply_rule(x, n, rule,
        state)) and counter[0] and step_counter[0] count it. Return (loss + penalty, hits,
        bound, applied): bound None after a loss that is not finite (no step); applied False
        where the bound is `limit` or more (or NaN): the caller then runs the step, guarded,
        without advancing the slots again. No Python code runs between the first write to the
        weights and the last count, so a signal's handler finds the step whole or not begun."""
        cdef Rule r
        cdef double change, state_bound, bound
        self.check(x, n, first_row, True)
        self.check_first_own()
        if (rule is None) == (scale is None):
            raise ValueError(f"Expected a rule or a scale (the GEMMs' step), one of them. "
                             f"Received: rule={rule!r}, scale={scale!r}")
        if rule is not None:
            read_rule(rule, &r, False)
            self.bind_state(state, 2 if r.kind == RULE_ADAM else 1)
            check_slots(slots)
        l2 = self.penalties()
        if counter.shape[0] != 1 or step_counter.shape[0] != 1:
            raise ValueError(f"Expected counters of one element. Received: shapes "
                             f"({counter.shape[0]},), ({step_counter.shape[0]},)")
        loss, hits, gradient_bound = self.passes(
            x, n, loss_code, targets, sample_weight, loss_scale, penalty, first_row, iteration,
            scale, weight_bound, input_bound, n_threads)
        if gradient_bound is None:
            return loss, hits, None, False
        bound = gradient_bound
        if rule is not None:
            change = change_bound(&r, &slots[0], bound, &state_bound)
            bound = largest_bound(weight_bound + change, state_bound, bound)
        if not bound < limit:
            return loss, hits, bound, False
        if rule is None:
            self.step_scale(x, n, scale, l2, n_threads)
        else:
            self.step_rule(x, n, r, l2, n_threads)
        counter[0] += 1
        step_counter[0] += 1
        return loss, hits, bound, True

    cdef list penalties(self):
        """Each layer's L2 factor, as a float."""
        return [float(layer.l2) for layer in self.layers]

    cdef int step_scale(self, x, Py_ssize_t n, double scale, list l2, int n_threads) except -1:
        """apply's step, its arguments checked; l2: penalties()"""
        if self.first == FIRST_EXTERNAL:
            x = None
        if self.is_double:
            apply_sweep[double](self, x, n, scale, l2, max(n_threads, 1))
        else:
            apply_sweep[float](self, x, n, scale, l2, max(n_threads, 1))
        return 0

    cdef int step_rule(self, x, Py_ssize_t n, Rule r, list l2, int n_threads) except -1:
        """apply_rule's step, its arguments checked and its state bound; l2: penalties()"""
        if self.is_double:
            rule_sweep[double](self, x, n, r, l2, max(n_threads, 1))
        else:
            rule_sweep[float](self, x, n, r, l2, max(n_threads, 1))
        return 0

    cdef int bind_state(self, state, Py_ssize_t per_array) except -1:
        """Hold `state`'s arrays (apply_rule's), checked, and their addresses, unless they are
        the arrays held; a tuple of tuples held already (hold_state) is taken as it is."""
        cdef Py_ssize_t i, j, k = 0
        cdef float[::1] f
        cdef double[::1] d
        if type(state) is tuple and state is self.held_state and per_array == self.held_per_array:
            return 0
        self.held_state = None
        if len(state) != 2 * self.n_layers or any(len(entry) != per_array for entry in state):
            raise ValueError(f"Expected {per_array} state array(s) for each of the "
                             f"{2 * self.n_layers} weight arrays. Received: "
                             f"{[len(entry) for entry in state]}")
        arrays = [a for arrays in state for a in arrays]
        held = self.state_arrays
        if (held is not None and len(held) == len(arrays)
                and all(a is b for a, b in zip(held, arrays))):
            self.hold_state(state, per_array)
            return 0
        dtype = np.float64 if self.is_double else np.float32
        pointers = np.empty(len(arrays), np.uintp)
        for i, entry in enumerate(state):
            size = self.arrays[i].size
            for j, a in enumerate(entry):
                if not (isinstance(a, np.ndarray) and a.dtype == dtype and a.ndim == 1
                        and a.shape[0] == size and a.flags.c_contiguous
                        and a.flags.writeable):
                    received = (f"{a.dtype} of shape {a.shape}, c_contiguous="
                                f"{a.flags.c_contiguous}, writeable={a.flags.writeable}"
                                if isinstance(a, np.ndarray) else type(a).__name__)
                    raise ValueError(f"Expected state[{i}][{j}] as a flat, writeable, "
                                     f"C-contiguous {np.dtype(dtype)} array of {size} "
                                     f"elements. Received: {received}")
                if self.is_double:
                    d = a
                    pointers[k] = <size_t>&d[0]
                else:
                    f = a
                    pointers[k] = <size_t>&f[0]
                k += 1
        # The list keeps the arrays, hence the addresses, alive.
        self.state_arrays, self.state_pointers = arrays, pointers
        self.hold_state(state, per_array)
        return 0

    cdef int hold_state(self, state, Py_ssize_t per_array) except -1:
        """Keep `state`, just bound, to be taken as it is when given again, where it is a
        tuple of tuples (it cannot change)."""
        immutable = type(state) is tuple and all(type(entry) is tuple for entry in state)
        self.held_state = state if immutable else None
        self.held_per_array = per_array
        return 0


cdef double weights_peak(Program p, floating kind, int n_threads):
    """Program.weight_bound in the dtype of `kind` (its value unused)"""
    cdef const floating[:, ::1] W
    cdef const floating[::1] b
    cdef Py_ssize_t i
    cdef double peak = 0
    for i in range(p.n_layers):
        W, b = p.weights[i], p.biases[i]
        with nogil:
            peak = max(peak, max_abs_on(&W[0, 0], W.shape[0] * W.shape[1], n_threads),
                       max_abs(&b[0], b.shape[0]))
    return peak


cdef int forward_sweep(Program p, const floating[:, ::1] x, Py_ssize_t n, bint training,
                       bint head, Py_ssize_t first_row, long long iteration,
                       floating[:, ::1] out, bint has_out, int n_threads, Py_ssize_t stop,
                       bint defer_parts) except -1:
    """The layers 0 ... stop - 1 forward; with defer_parts, where the last of them is the
    sparse first layer, its outputs without activation or dropout after, and its threads
    left partial sums, they are left to the caller (head_pass): return PARTS_PENDING(_RELU)
    then, else PARTS_ADDED."""
    cdef const floating[:, ::1] a = x
    cdef const floating[:, ::1] W
    cdef const floating[::1] b
    cdef floating[:, ::1] z, target, dropped, quads, column_quads, partial, offset_sums
    cdef floating[::1] pack
    cdef const floating[::1] offsets
    cdef int[::1] starts, index, column_starts, column_index
    cdef Py_ssize_t i, last = p.n_layers - 1
    cdef int code, fused
    cdef bint has_pre, relu, columns, defer
    cdef int parts = PARTS_ADDED
    cdef double rate, peak
    cdef unsigned long long seed
    p.input_peaks[:] = -1
    p.delta_peaks[:] = -1
    if n == 0:
        return PARTS_ADDED
    for i in range(stop):
        code = p.head_codes[i] if head else p.codes[i]
        if i == last and has_out:
            z = out
        else:
            z = p.outputs[i]
            z = z[:n]
        has_pre = training and p.pre[i] is not None
        if has_pre:
            target = p.pre[i]
            target = target[:n]
        else:
            target = z
        fused = LINEAR_CODE if has_pre else code
        W, b = p.weights[i], p.biases[i]
        if i == 0 and p.first == FIRST_EXTERNAL:
            if fused != LINEAR_CODE:
                with nogil:
                    activate_rows(fused, target, target)
        elif i == 0 and p.first == FIRST_SPARSE:
            starts, index, quads = p.row_starts, p.row_index, p.row_quads
            # With one part, partial is empty and unused.
            partial = p.partial
            if partial.shape[0]:
                partial = partial[:n]
            else:
                partial = target
            relu = fused == RELU_CODE
            p.columns_of = NULL
            columns = training and p.trains
            if columns:
                # The backward pass's column groups too, in the same parallel loop.
                column_starts, column_index = p.column_starts, p.column_index
                column_quads = p.column_quads
            else:
                column_starts, column_index, column_quads = starts, index, quads  # unused
            offsets, offset_sums, pack = p.offsets, p.offset_sums, p.pack
            defer = (defer_parts and i == stop - 1 and (relu or fused == LINEAR_CODE)
                     and not has_pre and not (training and p.dropped[i] is not None))
            with nogil:
                if group_and_forward(x, starts, index, quads, columns, column_starts,
                                     column_index, column_quads, W, b, offsets, offset_sums,
                                     relu, target, partial, p.cut, n_threads,
                                     &peak if columns else NULL, not defer, pack):
                    parts = PARTS_PENDING_RELU if relu else PARTS_PENDING
                if not relu and fused != LINEAR_CODE:
                    activate_rows(fused, target, target)
            if columns:
                p.columns_of, p.columns_rows = &x[0, 0], x.shape[0]
                # The groups hold x's distances from the offsets: |x| <= |x - c| + |c| (to
                # half an ulp of x - c's rounding, far inside the guard's margin).
                if offsets.shape[0]:
                    peak += max_abs(&offsets[0], offsets.shape[0])
                p.input_peaks[0] = peak
        elif p.narrow[i]:
            with nogil:
                narrow_forward(a, W, b, fused, target, n_threads)
        elif not (training and p.hidden_rows[i] is not None and p.forward_density
                  and hidden_forward(p, i, a, W, b, fused, target, n_threads)):
            with nogil:
                dense_forward(a, W, b, fused, target, n_threads, <floating*>p.spare)
        if has_pre:
            with nogil:
                activate_rows(code, target, z)
        if training and p.dropped[i] is not None:
            dropped = p.dropped[i]
            dropped = dropped[:n]
            rate, seed = p.dropouts[i].rate, p.dropouts[i].seed
            with nogil:
                dropout(z, dropped, rate, seed, iteration, first_row)
            a = dropped
        else:
            a = z
    return parts


cdef inline bint few_nonzeros(const floating[:, ::1] a, double share,
                              int n_threads) noexcept nogil:
    """Whether at most `share` of a's elements (a's rows whole: C-contiguous) are nonzero,
    counted in one pass (a tenth of the grouping's time), so that the GEMMs' steps do not
    group"""
    cdef Py_ssize_t nonzeros = 0
    if a.shape[0] and a.shape[1]:
        scan(&a[0, 0], a.shape[0] * a.shape[1], &nonzeros, n_threads)
    return nonzeros <= share * a.shape[0] * a.shape[1]


cdef bint hidden_forward(Program p, Py_ssize_t i, const floating[:, ::1] a,
                        const floating[:, ::1] W, const floating[::1] b, int code,
                        floating[:, ::1] target, int n_threads) except -1:
    """Hidden layer i's target := act(a @ W + b) on a's nonzeros, where at most the
    forward's share of them are nonzero: return True; else False, for the GEMM"""
    cdef int[::1] starts, index
    cdef floating[:, ::1] quads, partial, offset_sums
    cdef floating[::1] pack
    cdef const floating[::1] offsets = p.no_offsets
    cdef Py_ssize_t n = a.shape[0], cut = p.hidden_cuts[i]
    cdef bint relu = code == RELU_CODE
    if not few_nonzeros(a, p.forward_density, n_threads):
        return False
    starts, index, quads = p.hidden_rows[i]
    partial, offset_sums = p.hidden_partials[i], p.hidden_offset_sums[i]
    pack = p.hidden_packs[i]
    partial = partial[:n] if partial.shape[0] else target  # unused with one part
    with nogil:
        group_lines(a, True, starts, index, quads, cut, n_threads, offsets)
        sparse_forward(starts, index, quads, W, b, offsets, offset_sums, relu, target, partial,
                       cut, n_threads, pack)
        if not relu and code != LINEAR_CODE:
            activate_rows(code, target, target)
    return True


cdef void backward_rows(int code, const floating* a, const floating* z,
                        floating[:, ::1] delta, int n_threads, double* peaks) noexcept nogil:
    """delta := delta * act_code'(z) (a = act(z)), a and z laid out as delta, in blocks of
    rows on up to n_threads threads: the same elements at any number of them. Unless peaks
    is NULL, peaks[0] := max |a|, peaks[1] := max |delta| after (max_abs's)."""
    cdef Py_ssize_t n = delta.shape[0], k = delta.shape[1], blocks = 1, block, i0, i1
    cdef double block_peaks[2 * BACKWARD_BLOCKS]
    if n == 0 or k == 0:
        if peaks != NULL:
            peaks[0] = peaks[1] = 0
        return
    if n * k >= PARALLEL_MIN_ELEMENTS:
        blocks = min(<Py_ssize_t>n_threads, n, BACKWARD_BLOCKS)
    if blocks == 1:
        backward_block(code, a, z, &delta[0, 0], n * k, peaks)
        return
    for block in prange(blocks, num_threads=blocks, schedule="static"):
        i0 = block * n // blocks
        i1 = (block + 1) * n // blocks
        backward_block(code, a + i0 * k, z + i0 * k, &delta[i0, 0], (i1 - i0) * k,
                       &block_peaks[2 * block] if peaks != NULL else NULL)
    if peaks != NULL:
        peaks[0] = peaks[1] = 0
        for block in range(blocks):
            peaks[0] = max(peaks[0], block_peaks[2 * block])
            peaks[1] = max(peaks[1], block_peaks[2 * block + 1])


cdef inline void backward_block(int code, const floating* a, const floating* z,
                                floating* delta, Py_ssize_t size, double* peaks) noexcept nogil:
    activation_backward(code, a, z, delta, size)
    if peaks != NULL:
        peaks[0] = max_abs(a, size)
        peaks[1] = max_abs(delta, size)


cdef bint hidden_input_grad(Program p, Py_ssize_t i, const floating[:, ::1] delta,
                           const floating[:, ::1] W, floating[:, ::1] previous,
                           int n_threads) except -1:
    """Hidden layer i's previous := delta @ W.T on delta's nonzeros (delta grouped by rows,
    the sparse forward kernels with a zero bias on W's slabs transposed as they are packed),
    where it has the buffers and at most the input gradient's share of delta is nonzero:
    return True; else False, for the GEMM"""
    cdef int[::1] starts, index
    cdef floating[:, ::1] quads, partial, offset_sums
    cdef floating[::1] pack, zeros
    cdef const floating[::1] offsets = p.no_offsets
    cdef tuple entry
    cdef Py_ssize_t n = delta.shape[0], cut = p.hidden_input_cuts[i]
    if (p.hidden_inputs[i] is None or n == 0
            or not few_nonzeros(delta, p.input_density, n_threads)):
        return False
    entry = p.hidden_inputs[i]
    starts, index, quads = entry[0], entry[1], entry[2]
    partial, offset_sums, pack, zeros = entry[3], entry[4], entry[5], entry[6]
    if partial.shape[0]:
        partial = partial[:n]
    else:
        partial = previous  # unused with one part
    with nogil:
        group_lines(delta, True, starts, index, quads, cut, n_threads, offsets)
        sparse_forward(starts, index, quads, W, zeros, offsets, offset_sums, False, previous,
                       partial, cut, n_threads, pack, True)
    return True


cdef inline const floating[:, ::1] layer_input(Program p, Py_ssize_t i, Py_ssize_t n,
                                               const floating[:, ::1] x):
    """The first n rows of layer i's input: x, or the previous output after dropout."""
    cdef const floating[:, ::1] a
    if i == 0:
        return x
    a = p.dropped[i - 1] if p.dropped[i - 1] is not None else p.outputs[i - 1]
    return a[:n]


cdef int param_grad(Program p, Py_ssize_t i, const floating[:, ::1] x,
                    const floating[:, ::1] delta, floating alpha, floating beta,
                    floating[:, ::1] dW, floating[::1] db, int n_threads,
                    const Rule* rule=NULL) except -1:
    """dW := alpha X_i.T @ delta + beta dW;  db := alpha sum_rows(delta) + beta db; then
    rule's step on each block, unless it is NULL"""
    cdef floating[:, ::1] quads
    cdef int[::1] starts, index
    cdef const floating[:, ::1] inputs
    cdef const floating[::1] offsets
    cdef floating[::1] delta_sums
    cdef floating[:, ::1] copy
    cdef Py_ssize_t cut
    if i == 0 and p.first == FIRST_SPARSE:
        starts, index, quads = p.column_starts, p.column_index, p.column_quads
        offsets, delta_sums, copy = p.offsets, p.delta_sums, p.delta_copy
        if not (x.shape[0] and p.columns_of == &x[0, 0] and p.columns_rows == x.shape[0]):
            with nogil:
                group_lines(x, False, starts, index, quads, p.cut, n_threads, offsets)
        with nogil:
            sparse_param_grad(starts, index, quads, delta, alpha, beta, dW, db, offsets,
                              delta_sums, p.cut, n_threads, rule, copy)
    elif p.narrow[i]:
        inputs = layer_input(p, i, delta.shape[0], x)
        with nogil:
            narrow_param_grad(inputs, delta, alpha, beta, dW, db, n_threads, rule)
    else:
        inputs = layer_input(p, i, delta.shape[0], x)
        if (p.hidden_columns[i] is not None and delta.shape[0]
                and few_nonzeros(inputs, p.gradient_density, n_threads)):
            starts, index, quads = p.hidden_columns[i]
            offsets = p.no_offsets
            delta_sums = p.no_delta_sums
            copy, cut = p.hidden_copies[i], p.hidden_cuts[i]
            with nogil:
                group_lines(inputs, False, starts, index, quads, cut, n_threads, offsets)
                sparse_param_grad(starts, index, quads, delta, alpha, beta, dW, db, offsets,
                                  delta_sums, cut, n_threads, rule, copy)
            return 0
        with nogil:
            dense_param_grad(inputs, delta, alpha, beta, dW, db, n_threads, rule)
    return 0


cdef int backward_sweep(Program p, const floating[:, ::1] x, Py_ssize_t n, bint gradients,
                        Py_ssize_t first_row, long long iteration, object layer_ready,
                        object flat, object bounds, int n_threads, Py_ssize_t top,
                        bint applied_below) except -1:
    """From layer `top`'s deltas down to the first layer's; applied_below: top's deltas have
    their activation's derivative already (the head pass's input gradient)."""
    cdef floating[:, ::1] delta, outputs, pre, dW, previous
    cdef floating[::1] db
    cdef const floating[:, ::1] W
    cdef const floating* relu_of
    cdef const floating* a
    cdef const floating* z
    cdef Py_ssize_t i
    cdef int code, previous_code
    cdef bint measured
    cdef double rate
    cdef unsigned long long seed
    # Whether the layer's delta has its activation's derivative already: the input gradient
    # of the layer above applies it as it stores each block, where no dropout comes between
    # (the narrow one ReLU's alone).
    cdef bint applied = applied_below
    cdef double peaks[2]
    # The first layer's input is the forward pass's; those above top's, the head pass's.
    p.input_peaks[1:top + 1] = -1
    p.delta_peaks[:top] = -1
    if top == p.n_layers - 1:
        p.delta_peaks[top] = -1
    for i in reversed(range(top + 1)):
        delta = p.deltas[i]
        delta = delta[:n]
        if p.dropped[i] is not None:
            rate, seed = p.dropouts[i].rate, p.dropouts[i].seed
            with nogil:
                dropout(delta, delta, rate, seed, iteration, first_row)
        code = p.codes[i]
        if code != LINEAR_CODE and n and not applied:
            outputs = p.outputs[i]
            outputs = outputs[:n]
            pre = outputs
            if p.pre[i] is not None:
                pre = p.pre[i]
                pre = pre[:n]
            with nogil:
                activation_backward(code, &outputs[0, 0], &pre[0, 0], &delta[0, 0],
                                    n * delta.shape[1])
        if gradients and not (i == 0 and p.first == FIRST_EXTERNAL):
            dW, db = p.grads[2 * i], p.grads[2 * i + 1]
            param_grad(p, i, x, delta, 1, 0, dW, db, n_threads)
            if layer_ready is not None:
                layer_ready(flat, bounds[2 * i], bounds[2 * i + 2])
        applied = False
        if i > 0:
            W = p.weights[i]
            previous = p.deltas[i - 1]
            previous = previous[:n]
            if p.narrow[i]:
                relu_of = NULL
                if n and p.codes[i - 1] == RELU_CODE and p.dropped[i - 1] is None:
                    outputs = p.outputs[i - 1]
                    relu_of = &outputs[0, 0]
                    applied = True
                with nogil:
                    # Without gradients, the step's overflow bound follows (bound_sweep): the
                    # input gradient measures its inputs and outputs as it stores them.
                    narrow_input_grad(delta, W, previous, n_threads, relu_of,
                                      peaks if applied and not gradients else NULL)
                if applied and not gradients:
                    p.input_peaks[i], p.delta_peaks[i - 1] = peaks[0], peaks[1]
            else:
                # The previous layer's activation derivative (unless dropout comes between)
                # in each block as it is stored, and, without gradients, the peaks of its
                # outputs and of the deltas made, as the narrow input gradient's.
                previous_code = LINEAR_CODE
                a = z = NULL
                measured = n > 0 and p.dropped[i - 1] is None
                if measured:
                    previous_code = p.codes[i - 1]
                    outputs = p.outputs[i - 1]
                    a = z = &outputs[0, 0]
                    if p.pre[i - 1] is not None:
                        pre = p.pre[i - 1]
                        z = &pre[0, 0]
                    applied = previous_code != LINEAR_CODE
                if p.input_density and hidden_input_grad(p, i, delta, W, previous, n_threads):
                    # The derivative after it, measuring the peaks as the GEMM's epilogue does.
                    if applied:
                        with nogil:
                            backward_rows(previous_code, a, z, previous, n_threads,
                                          peaks if not gradients else NULL)
                        if not gradients:
                            p.input_peaks[i], p.delta_peaks[i - 1] = peaks[0], peaks[1]
                    continue
                with nogil:
                    dense_input_grad(delta, W, previous, n_threads, <floating*>p.spare,
                                     previous_code, a, z,
                                     peaks if measured and not gradients else NULL)
                if measured and not gradients and peaks[0] >= 0:
                    p.input_peaks[i], p.delta_peaks[i - 1] = peaks[0], peaks[1]
    return 0


cdef tuple train_sweep(Program p, const floating[:, ::1] x, Py_ssize_t n, int loss_code,
                       object targets, const floating[::1] sample_weight, double loss_scale,
                       double penalty, Py_ssize_t first_row, long long iteration, object scale,
                       double weight_bound, double input_bound, int n_threads):
    cdef Py_ssize_t last = p.n_layers - 1, top = last, hits = 0
    cdef floating[:, ::1] logits = p.outputs[last]
    cdef floating[:, ::1] delta = p.deltas[last]
    cdef floating[:, ::1] no_out = None
    cdef floating[:, ::1] hidden, partial, previous
    cdef const floating[:, ::1] a, W
    cdef const floating[::1] bias
    cdef const Py_ssize_t[::1] labels = None
    cdef const floating[:, ::1] t = None
    cdef const floating* w = NULL
    cdef const floating* relu_of = NULL
    cdef double peaks[2]
    cdef double loss
    cdef int pending
    cdef bint applied = False
    cdef double step_scale = 0 if scale is None else scale
    logits, delta = logits[:n], delta[:n]
    if (last > 0 and n and p.narrow[last] and p.codes[last] == LINEAR_CODE
            and p.pre[last] is None and p.dropped[last] is None and p.weights[last].shape[0]):
        # The head's product, the loss and the head's input gradient in one pass over the
        # batch's rows (head_pass), after the layers below.
        labels, t = loss_labels(loss_code, targets), loss_targets(loss_code, targets, logits)
        check_loss(loss_code, logits, labels, t, delta, sample_weight)
        if sample_weight is not None:
            w = &sample_weight[0]
        pending = forward_sweep(p, x, n, True, False, first_row, iteration, no_out, False,
                                n_threads, last, True)
        hidden, previous = p.outputs[last - 1], p.deltas[last - 1]
        hidden, previous = hidden[:n], previous[:n]
        a = hidden
        if p.dropped[last - 1] is not None:
            a = p.dropped[last - 1]
            a = a[:n]
        elif p.codes[last - 1] == RELU_CODE:
            relu_of = &hidden[0, 0]
            applied = True
        partial = hidden  # unused unless the first layer's partial sums are pending
        if pending != PARTS_ADDED:
            partial = p.partial
            partial = partial[:n]
        W, bias = p.weights[last], p.biases[last]
        with nogil:
            loss = head_pass(loss_code, a, W, bias, logits, labels, t, w, loss_scale, delta,
                             &hits, hidden, partial, pending, previous, relu_of,
                             peaks if applied else NULL, n_threads)
        if applied:
            p.input_peaks[last], p.delta_peaks[last - 1] = peaks[0], peaks[1]
        top = last - 1
    else:
        forward_sweep(p, x, n, True, False, first_row, iteration, no_out, False, n_threads,
                      p.n_layers, False)
        loss, hits = checked_loss_and_hits(loss_code, logits, targets, delta, sample_weight,
                                           loss_scale, n_threads, True)
    loss += penalty
    if not isfinite(loss):
        return loss, hits, None
    backward_sweep(p, x, n, False, first_row, iteration, None, None, None, n_threads, top,
                   applied)
    bound = bound_sweep(p, x, n, step_scale, weight_bound, input_bound, scale is None)
    return loss, hits, bound


cdef void head_slot(int loss_code, const floating[:, ::1] a, const floating[:, ::1] W,
                    const floating[::1] b, floating[:, ::1] logits,
                    const Py_ssize_t[::1] labels, const floating[:, ::1] targets,
                    const floating* w, double scale, floating[:, ::1] delta, bint count,
                    floating[:, ::1] hidden, const floating[:, ::1] partial, int pending,
                    floating[:, ::1] previous, const floating* relu_of, LossBlocks blocks,
                    Py_ssize_t b0, Py_ssize_t b1, double* sums, Py_ssize_t* counts,
                    double* slot_peaks) noexcept nogil:
    """head_pass's blocks of rows b0 ... b1 - 1"""
    cdef Py_ssize_t i0 = b0 * blocks.rows, i1 = min(b1 * blocks.rows, logits.shape[0]), block
    if pending != PARTS_ADDED:
        add_parts_rows(hidden, partial, pending == PARTS_PENDING_RELU, i0, i1)
    narrow_forward_rows(a, W, b, LINEAR_CODE, logits, i0, i1)
    for block in range(b0, b1):
        loss_block(loss_code, logits, labels, targets, w, scale, delta, count, blocks.rows,
                   block, sums, counts)
    narrow_input_rows(delta, W, previous, relu_of, i0, i1, slot_peaks)


cdef double head_pass(int loss_code, const floating[:, ::1] a, const floating[:, ::1] W,
                      const floating[::1] b, floating[:, ::1] logits,
                      const Py_ssize_t[::1] labels, const floating[:, ::1] targets,
                      const floating* w, double scale, floating[:, ::1] delta,
                      Py_ssize_t* hits, floating[:, ::1] hidden,
                      const floating[:, ::1] partial, int pending, floating[:, ::1] previous,
                      const floating* relu_of, double* peaks, int n_threads) noexcept nogil:
    """A narrow linear head's training rows, in one parallel region: hidden := act(hidden +
    partial) where the first layer's partial sums are pending (add_parts_rows), logits := a
    @ W + b (narrow_forward), the loss `loss_code` and its gradient into delta
    (fastnaive._losses.loss_block), previous := delta @ W.T, times ReLU's derivative unless
    relu_of is NULL (narrow_input_grad). Each thread takes whole blocks of the loss's rows
    (LossBlocks) and runs every part on them alone, so nothing passes between the threads,
    and every element is the same sum as in those passes apart, at any number of threads.
    Return scale * the loss (blocks_total), hits[0] := its hits, and unless peaks is NULL,
    peaks[0] := max |relu_of|, peaks[1] := max |previous| (narrow_input_grad's)."""
    cdef Py_ssize_t n = logits.shape[0], m = logits.shape[1], k = W.shape[0]
    cdef LossBlocks blocks = loss_blocks(n)
    cdef double sums[LOSS_BLOCKS]
    cdef Py_ssize_t counts[LOSS_BLOCKS]
    cdef double slot_peaks[2 * LOSS_BLOCKS]
    cdef Py_ssize_t slots = 1, slot
    if narrow_in_parallel(n, m, k, blocks.count, n_threads):
        slots = min(<Py_ssize_t>n_threads, blocks.count)
    if slots > 1:
        for slot in prange(slots, num_threads=slots, schedule="static"):
            head_slot(loss_code, a, W, b, logits, labels, targets, w, scale, delta,
                      hits != NULL, hidden, partial, pending, previous, relu_of, blocks,
                      slot * blocks.count // slots, (slot + 1) * blocks.count // slots, sums,
                      counts, &slot_peaks[2 * slot] if peaks != NULL else NULL)
    else:
        head_slot(loss_code, a, W, b, logits, labels, targets, w, scale, delta,
                  hits != NULL, hidden, partial, pending, previous, relu_of, blocks, 0,
                  blocks.count, sums, counts, slot_peaks if peaks != NULL else NULL)
    if peaks != NULL:
        peaks[0] = peaks[1] = 0
        for slot in range(slots):
            peaks[0] = max(peaks[0], slot_peaks[2 * slot])
            peaks[1] = max(peaks[1], slot_peaks[2 * slot + 1])
    return blocks_total(blocks, sums, counts, scale, hits)


cdef double bound_sweep(Program p, const floating[:, ::1] x, Py_ssize_t n, double scale,
                        double weight_bound, double input_bound,
                        bint gradients) except? -1:
    """fused_bound's (gradients False) or gradient_bound's (True) bound, for the batch x
    (None for FIRST_EXTERNAL)"""
    cdef const floating[:, ::1] inputs, delta
    cdef Py_ssize_t i
    cdef double largest_input, largest_delta, sums, beta, reached, bound = 0
    cdef double rate = abs(scale)
    cdef list l2 = [float(layer.l2) for layer in p.layers]
    for i in range(p.n_layers):
        largest_input = input_bound
        # Where the training forward pass grouped this x (FIRST_SPARSE), it measured max |x|.
        if (i == 0 and p.first == FIRST_SPARSE and p.input_peaks[0] >= 0 and x is not None
                and n and p.columns_of == &x[0, 0] and p.columns_rows == x.shape[0]):
            largest_input = min(input_bound, p.input_peaks[0])  # this batch's
        elif i and p.input_peaks[i] >= 0:
            largest_input = p.input_peaks[i]
        elif i:
            inputs = layer_input(p, i, n, x)
            largest_input = max_abs(&inputs[0, 0], n * inputs.shape[1]) if n else 0
        if p.delta_peaks[i] >= 0:
            largest_delta = p.delta_peaks[i]
        else:
            delta = p.deltas[i]
            largest_delta = max_abs(&delta[0, 0], n * delta.shape[1]) if n else 0
        # X.T @ delta sums n products per element, each at most |x| |delta|
        sums = n * largest_delta * (largest_input if largest_input > 1.0 else 1.0) if n else 0
        if gradients:
            reached = sums + abs(2 * l2[i]) * weight_bound
        else:
            beta = abs(1.0 + 2 * scale * l2[i]) if l2[i] else 1.0
            reached = beta * weight_bound + rate * sums
        if reached != reached:  # NaN: an overflow on the way (0 * inf)
            return float("inf")
        bound = max(bound, sums, reached)
    return bound


cdef int apply_sweep(Program p, const floating[:, ::1] x, Py_ssize_t n, double scale,
                     list l2, int n_threads) except -1:
    cdef floating[:, ::1] delta, W, dW
    cdef floating[::1] b, db
    cdef Py_ssize_t i
    cdef floating beta
    for i in reversed(range(p.n_layers)):
        if i == 0 and p.first == FIRST_EXTERNAL:
            continue
        delta = p.deltas[i]
        delta = delta[:n]
        W, b = p.weights[i], p.biases[i]
        if l2[i]:
            # L2 weighs W alone: the bias's step goes through its gradient buffer (zeroed, so
            # beta scales nothing there) and is added after, as an SGD step.
            beta = <floating>(1.0 + 2 * scale * l2[i])
            db = p.grads[2 * i + 1]
            db[:] = 0
            param_grad(p, i, x, delta, <floating>scale, beta, W, db, n_threads)
            with nogil:
                axpy(<floating>1, &db[0], &b[0], <int>b.shape[0])
        else:
            param_grad(p, i, x, delta, <floating>scale, 1, W, b, n_threads)
    return 0


cdef int rule_sweep(Program p, const floating[:, ::1] x, Py_ssize_t n, Rule rule, list l2,
                    int n_threads) except -1:
    cdef floating[:, ::1] delta, W, dW
    cdef floating[::1] b, db
    cdef Py_ssize_t i, a, j, per_array = 2 if rule.kind == RULE_ADAM else 1
    for i in reversed(range(p.n_layers)):
        delta = p.deltas[i]
        delta = delta[:n]
        W, b = p.weights[i], p.biases[i]
        rule.penalty = 2 * l2[i]
        rule.arrays[0], rule.arrays[1] = &W[0, 0], &b[0]
        for a in range(2):
            for j in range(2):
                rule.state[2 * a + j] = NULL
                if j < per_array:
                    rule.state[2 * a + j] = <void*>p.state_pointers[(2 * i + a) * per_array + j]
        dW, db = p.grads[2 * i], p.grads[2 * i + 1]
        param_grad(p, i, x, delta, 1, 0, dW, db, n_threads, &rule)
    return 0
