"""The planned step: every entry point trains, evaluates and predicts through a Step.

Design: a Step is built once per call (fit, evaluate_loss, predict) or kept per model for
the per-batch calls (loss_and_gradients, one_training_step), from the model, the largest
batch it will see, the inputs and the optimizer. Everything that can be decided once is
decided there, and nowhere else:
- buffers: each layer's outputs and deltas, dropout's outputs, GELU's pre-activations,
  the batch gather buffers, and one flat buffer [dW0, db0, ..., loss sum, hits] whose views
  are the gradients, so that a gradient reducer (fastnaive.distributed) sums one buffer per step;
- kernels: each layer's activation code (a head the loss absorbs stays logits in training)
  and the loss's kernel; the first layer runs on the inputs' nonzeros (fastnaive._sparse)
  when they are zero enough (SPARSE_MAX_DENSITY; MNIST is 81% zeros), which is exact and,
  there, 1.7-2.1x faster than the dense GEMMs (benchmarks/sparse.py); else, where each
  feature has one most common value (standardised or shifted images: the background), on
  the inputs' distances from those offsets c when they are zero enough, with X @ W =
  (X - c) @ W + c @ W and X.T @ delta = (X - c).T @ delta + outer(c, sum_rows(delta)), both
  exact (near the density limit, a training Step times both kernels on a batch of its
  inputs and takes the faster: MEASURED_BAND); and on a scipy.sparse matrix's nonzeros
  (fastnaive._csr, fastnaive.sparse); a layer of at most NARROW_MAX_WIDTH outputs (a
  classifier's head) runs its products on the narrow kernels of fastnaive._sparse rather
  than the BLAS, where they are faster (`narrow_layers`); a large hidden layer on a ReLU's
  outputs runs its training forward and weight gradient on their nonzeros, and, where it is
  a ReLU's itself, its input gradient on its deltas' nonzeros, in each step where few enough
  of them are (SPARSE_HIDDEN_MAX_DENSITY);
- threads: `threads()` is the thread policy of a call;
- the update: the optimizer's Update, bound once. When no reducer is plugged in, it runs
  inside the weight-gradient kernels, after every input gradient has used the old W: an
  optimizer that declares a `gemm_scale` inside each GEMM (W := (1 + 2 s l2) W + s * X.T @
  delta), one that declares an element rule (momentum, Nesterov, Adam) on each block of the
  gradient X.T @ delta + 2 l2 W as the kernel produces it, in its thread and while it is in
  cache (Program.apply_rule); otherwise the L2 terms are added to the gradients once, after
  any reduction, and the optimizer's kernels run over them;
- all or nothing: every write of a step to the weights, the optimizer's state and the step
  counters is one compiled call (Program.train_and_update, where the bound allows) or one
  sequence of kernel calls (`commit`, fastnaive._kernels.run_calls), with no Python code
  between them, so an exception a signal handler raises (KeyboardInterrupt) lands before or
  after it. Before it, a bound on the largest |w| the step can leave is
  computed from the largest inputs, deltas or gradients (a few microseconds) and the
  weights' bound; where that bound could overflow the dtype, the weights and state are
  copied first, and a step that leaves a non-finite value is undone and raises
  FloatingPointError;
- the reducer hook: `reducer.reduce(flat)` runs between "gradients ready" and "update" and
  sums the flat buffer over processes in place; a reducer that also has
  `layer_ready(flat, lo, hi)` is told, during the backward pass and from the last layer to
  the first, as soon as a layer's gradients flat[lo:hi] are final, so that it can start
  reducing them while earlier layers are still being computed (reduce then completes).
- the layer loops: forward, backward, the fused update and its bound run as compiled loops
  over the layers (fastnaive._program.Program, built from this plan by `compiled`), one call
  from Python each rather than one per kernel.
Callers validate and convert inputs first (fastnaive._validation, fastnaive.sparse); a Step
only slices its preallocated arrays and calls the kernels, so a step in steady state
allocates nothing.
"""

import math
import time
import weakref

import numpy as np

from fastnaive import _activations, _blas, _cpus, _kernels, _losses, _program, _sparse
from fastnaive._memory import aligned_empty
from fastnaive.optimizers import Update
from fastnaive.sparse import CsrBatch

__all__ = ["Step", "step_for"]

# Above this share of nonzeros the dense GEMMs win, by the instruction set the sparse kernels
# run on (fastnaive._sparse.instruction_set(); the BLAS's kernels are as wide). Measured by
# benchmarks/crossover.py, the book's first layer on Fashion-MNIST thinned or filled, at 1 and
# 2 threads (sparse / dense time, 1 thread; 2 threads): AVX-512 0.88, 0.93 at 50% and 1.06,
# 1.06 at 60%; AVX2 (Zen 4 held to AVX2, one thread: its two-thread rounds crossed placements)
# 0.88 at 50% and 1.02 at 60%; SSE 0.94, 0.84 at 50% and 1.13, 1.08 at 60%.
SPARSE_MAX_DENSITY = {"avx512": 0.55, "avx2": 0.55, "baseline": 0.55}
# Within MEASURED_BAND of that limit (Fashion-MNIST's 49.8% on every instruction set), a
# training Step times both kernels of its first layer, forward and weight gradient, on a
# batch of its inputs (best of MEASURE_ROUNDS, the two alternating), and leaves the limit's
# choice for the other kernels where those are faster by MEASURED_MARGIN or more (so that
# timing noise near the crossover does not make two runs differ): once per process for each
# instruction set, dtype, shape and density (to the hundredth), on one thread, so that the
# choice, and so the bits, are the same at any number of threads.
# Fashion-MNIST's first layer held to AVX2 on Zen 4 (the GEMMs take 1.16-1.19x the sparse
# kernels' time, medians of 40-60 timings): best of 3 rounds, one kernel after the other,
# took the GEMMs in none of 40 timings; best of 5, alternating, in 1 and 3 of 60 (a noisy
# spell); best of 9, alternating, in none of 60 (the closest: the GEMMs at 0.91x, where 0.9x
# takes them).
MEASURED_BAND = 0.15
MEASURED_MARGIN = 0.1
MEASURE_ROUNDS = 9
_measured_choices = {}
# Inputs of more than SAMPLED_SCAN_ROWS rows are not read whole to choose the first layer's
# kernels: their share of nonzeros (or of distances from the offsets) is counted on
# SCAN_BLOCKS blocks of SCAN_BLOCK_ROWS consecutive rows, evenly spaced (MNIST: 4096 of its
# 60,000 rows; a Step on it is built in 0.5-0.7 ms against 6.0-6.7 reading them all, on Zen
# 4), and where the sparse kernels take them, each training batch's largest |x| comes from
# its grouping (the overflow guard's input bound: Program.fused_bound); only the GEMMs'
# inputs are read whole, for it.
SCAN_BLOCKS = 16
SCAN_BLOCK_ROWS = 256
SAMPLED_SCAN_ROWS = 4 * SCAN_BLOCKS * SCAN_BLOCK_ROWS
# The rows, spread over the training inputs, whose nonzeros place the sparse kernels' cut.
CUT_SAMPLE_ROWS = 256
# The instruction sets on which the narrow kernels beat the BLAS on a layer of up to
# NARROW_MAX_WIDTH outputs (benchmarks/narrow.py, the book's second layer, 128 x 512 x 10, on
# Zen 5: against OpenBLAS's AVX2 kernels 1.2-2.6x on one thread; against its AVX-512 ones
# level on one and 1.2-2.1x on two; the baseline's SSE2 versions 1.5-3x slower than it).
NARROW_INSTRUCTION_SETS = ("avx512", "avx2")
NARROW_MAX_WIDTH = _sparse.NARROW_WIDTH
# A hidden layer whose inputs are a ReLU's outputs (about half of them zero) runs its
# training products on their nonzeros (the sparse kernels): its forward X @ W + b in each
# step where at most SPARSE_HIDDEN_MAX_DENSITY[isa][0] of X is nonzero, its weight gradient
# X.T @ delta where at most [1] is, by instruction set (0: never), the GEMMs otherwise; only
# for layers of at least SPARSE_HIDDEN_MIN_WEIGHTS weights. X's nonzeros are counted before
# each product (one pass, a tenth of the grouping's time), so the choice, and the bits, are
# the same at any number of threads. benchmarks/hidden.py, sparse / GEMM time on Zen 4, ReLU
# outputs with the nonzeros spread at random, at 50% and 70% nonzero, 1 thread (2 threads):
# - forward, AVX-512: 128 x 512 -> 512 0.62, 0.72 (0.65, 0.76); 256 x 2048 -> 2048 (the wide
#   workload's) 0.88, 0.87 (0.87, 0.86); 1024 x 512 -> 512 0.67, 0.79 (0.69, 0.81); 128 x 256
#   -> 128 (the deep workload's second layer) 0.84, 0.96 (1.00, 1.13). Held to AVX2 (the
#   BLAS too), 1 thread: 0.82, 0.97; 1.17, 1.36 (at 30%: 0.88); 0.93, 1.11; 0.99, 1.13.
# - weight gradient, AVX-512: 0.71, 0.83 (0.74, 0.85); 0.76, 0.84 (0.74, 0.84); 0.77, 0.84
#   (0.75, 0.84); 0.85, 0.98 (1.00, 1.13). Held to AVX2: 0.89, 1.05; 1.00, 1.14; 0.93, 1.14;
#   1.05, 1.19. In float64 (128 x 512 -> 512, AVX-512) at 70%: 0.83 and 0.89 (0.85, 0.92);
#   at 80% the two-thread gradient 1.13.
# Since the forward reads copies of W's slabs (fastnaive._sparse's PACK_MIN_BYTES), the
# wide layer's forward on AVX-512 is 0.73, 0.82 (0.86, 0.98), 1024 x 1024 0.68, 0.83; held
# to AVX2, 1 thread, 0.82 at 50% and 60% and 1.25 at 70% (the book-sized 0.90, 1.05; float64
# 1.01 at 50%), so the limits stand (one run on a noisier Zen 4, whose gradient figures,
# the code unchanged, moved by up to 0.2).
# Where such a layer is a ReLU's too, its deltas are zero wherever its outputs are: its input
# gradient delta @ W.T runs on delta's nonzeros in each step where at most [2] of them are,
# as a forward product (delta grouped by rows) on W's slabs transposed as the product packs
# them (_kernels' transpose_block). benchmarks/hidden.py on Zen 4, sparse / GEMM at 30%, 50%,
# 70% and 80% nonzero, 1 thread (2 threads): AVX-512, the wide workload's 256 x 2048 -> 2048
# 0.51, 0.66, 0.76, 0.83 (0.53, 0.65, 0.79, 0.83); book-sized 0.52, 0.65, 0.77, 0.84 (0.55,
# 0.68, 0.81, 0.86); 1024 x 512 -> 512 0.60, 0.73, 0.82, 0.93 (0.66, 0.79, 0.90, 0.92);
# float64 book-sized 0.54, 0.65, 0.76, 0.83 (0.55, 0.67, 0.78, 0.83). Held to AVX2 (the BLAS
# too) at 30%, 40%, 50% and 60%: wide 0.68, 0.77, 0.87, 0.99 (0.65, 0.78, 0.89, 0.97);
# book-sized 0.61, 0.72, 0.82, 0.92 (0.64, 0.75, 0.85, 0.95); 1024 x 512 -> 512 0.66, 0.79,
# 0.92, 1.05 (0.70, 0.81, 0.98, 1.12); float64 book-sized 0.67, 0.80, 0.92, 1.03 (0.84,
# 0.98, 1.07, 1.02): at 50%, where a ReLU's outputs mostly are, float32 gains on every shape.
SPARSE_HIDDEN_MAX_DENSITY = {
    "avx512": (0.7, 0.7, 0.7),
    "avx2": (0.4, 0.4, 0.5),
    "baseline": (0.0, 0.0, 0.0),
}
SPARSE_HIDDEN_MIN_WEIGHTS = 512 * 512
_blas_controller = None
# Per-batch entry points keep one Step per model, replaced when the model or batch outgrows it.
_cached_steps = weakref.WeakKeyDictionary()


def _signature(model):
    """What a Step's plan depends on; a kept Step is replaced when it changes."""
    dense = [
        (layer.input_size, layer.output_size, layer.activation, layer.l2 > 0)
        for layer in model.dense_layers
    ]
    dropouts = [d is not None for d in model.dropouts]
    return tuple(dense), tuple(dropouts), model.loss.name, model.dtype


class Step:
    """One call's plan for `model` on batches of up to `capacity` samples like `x`.

    `training=False` leaves out what only training needs (hidden deltas, gradients, the
    pre-activations GELU's derivative reads, dropout's outputs).
    """

    #: Whether train runs a step with a fused update (the training forward, the loss,
    #: backward, the update's bound and, where it allows, the update) in one compiled call,
    #: Program.train_and_update, where it can (no reducer, no scipy.sparse batch), rather than
    #: one call each (Step's methods of those names, which benchmarks/phases.py times).
    compiled_passes = True

    def __init__(self, model, capacity, x=None, *, optimizer=None, reducer=None, training=True):
        self.model, self.capacity, self.reducer = model, capacity, reducer
        self.signature = _signature(model)
        self.layers, self.dropouts, self.loss = model.dense_layers, model.dropouts, model.loss
        self.penalised = [layer for layer in self.layers if layer.l2]
        dtype = model.dtype
        # The kernel code of each layer in training (a head the loss absorbs stays logits)
        # and in prediction (every activation but softmax, which predict applies to rows).
        self.codes = [layer.code for layer in self.layers]
        if self.layers[-1].activation == self.loss.absorbs:
            self.codes[-1] = _activations.LINEAR
        self.head_codes = [layer.code for layer in self.layers]
        sizes = [layer.output_size for layer in self.layers]
        # outputs[l] is layer l's output (for a head the loss absorbs, its logits); deltas[l]
        # is the loss gradient with respect to layer l's output, then pre-activation;
        # dropped[l] is outputs[l] after dropout, the next layer's input; pre[l] is layer l's
        # pre-activation where its derivative needs it (GELU).
        self.outputs = [aligned_empty((capacity, m), dtype) for m in sizes]
        self.training = training
        hidden = sizes[:-1] if training else []  # evaluation needs only the loss's
        self.deltas = [aligned_empty((capacity, m), dtype) for m in hidden]
        self.deltas.append(aligned_empty((capacity, sizes[-1]), dtype))
        self.dropped = [
            aligned_empty((capacity, m), dtype) if training and d is not None else None
            for m, d in zip(sizes, self.dropouts)
        ]
        self.pre = [
            aligned_empty((capacity, m), dtype)
            if training and code in _activations.NEEDS_PRE_ACTIVATION
            else None
            for m, code in zip(sizes, self.codes)
        ]
        self.gradients = self.flat = None
        if training:
            self.flat = aligned_empty(sum(w.size for w in model.weights) + 2, dtype)
            self.flat.fill(0)
            self.gradients = _views(self.flat, model.weights)
            # Layer i's gradients [dW_i, db_i] are flat[bounds[2 i]:bounds[2 i + 2]].
            self.bounds = np.cumsum([0] + [w.size for w in model.weights]).tolist()
        self.layer_ready = getattr(reducer, "layer_ready", None)
        self.n_threads = 1  # set by threads()
        self.n_features = model.input_size
        self.batch_inputs = self.batch_targets = self.batch_weights = None
        # The first layer's kernels: GEMMs, on the nonzeros of dense inputs (sparse_input), or
        # on a scipy.sparse matrix's (csr_input).
        self.sparse_input = self.csr_input = False
        self.row_groups = self.column_groups = self.batch_rows = None
        # Where the weight gradient copies the first layer's delta to read it faster (None:
        # it reads delta; _delta_copy).
        self.delta_copy = None
        # The first layer's offsets when it runs on the inputs' distances from them (else
        # None; its grouping subtracts them as it reads each batch), and their buffer.
        self.offsets = self.offset_values = None
        # Where the sparse kernels cut the first layer's features in two parts (None: the
        # middle), balanced on the first training inputs (_balanced_cut); the Program's.
        self.cut = self.program_cut = None
        self.update = self.bound_weights = None
        self.program = None  # built by compiled()
        self.narrow = narrow_layers(self.layers)
        # Per layer, None or the buffers of a hidden layer's training products on its inputs'
        # nonzeros (the Program's hidden_groups), and the shares of nonzeros up to which its
        # forward and its weight gradient run them.
        self.hidden_densities = SPARSE_HIDDEN_MAX_DENSITY[_sparse.instruction_set()]
        self.hidden_groups = [None] * len(self.layers)
        if training and max(self.hidden_densities) > 0:
            self.hidden_groups = _hidden_groups(
                self.layers, self.codes, self.narrow, capacity, dtype, self.hidden_densities[2] > 0
            )
        # The step number that dropout masks are drawn for, in an array so that a step's
        # kernels count it (commit).
        self.counter = np.zeros(1, np.int64)
        self.count_call = (_kernels.increment, (self.counter,))
        # The overflow guard (commit): the largest magnitude a step may leave, an upper
        # bound of max |w| over the weights (None: to be measured), and of max |x| over the
        # inputs given to use_inputs, which every caller of train runs first.
        self.limit = float(np.finfo(dtype).max) / 16
        self.weight_bound = self.input_bound = None
        if x is not None:
            self.use_inputs(x, measure=training)
        if optimizer is not None:
            self.use_optimizer(optimizer)

    @property
    def iteration(self):
        """The number of training steps taken (dropout's masks depend on it)."""
        return int(self.counter[0])

    @iteration.setter
    def iteration(self, value):
        self.counter[0] = value

    def weights_changed(self):
        """Note that the weights may have been written outside the steps (measured again)."""
        self.weight_bound = None

    def fits(self, model, n_samples):
        """True when this Step serves `model` for a batch of n_samples."""
        return n_samples <= self.capacity and self.signature == _signature(model)

    def use_inputs(self, x, measure=False):
        """Choose the first layer's kernels for inputs like x: on their nonzeros, on their
        distances from each feature's most common value where only those are zero enough,
        or GEMMs (with measure, near the density limit: the faster of the two, timed); and
        bound their magnitude for the steps on x (the overflow guard: fused_bound), or leave
        that to each batch's grouping (inf) where the sparse kernels take a large x. Its
        scans and timings run on OpenMP's default thread count, capped (_cpus.capped) where
        they may run in parallel: measuring, or x of SCAN_PARALLEL_MIN elements or more (the
        batch of a per-batch call, smaller, scans on one thread without it)."""
        if measure or x.shape[0] * x.shape[1] >= _kernels.SCAN_PARALLEL_MIN:
            with _cpus.capped():
                self._use_inputs(x, measure)
        else:
            self._use_inputs(x, measure)

    def _use_inputs(self, x, measure):
        self.csr_input = isinstance(x, CsrBatch)
        self.offsets = None
        if self.csr_input:
            self.sparse_input = False
            self.input_bound = x.max_abs()
            return
        sampled = x.shape[0] > SAMPLED_SCAN_ROWS
        nonzeros, bound = _scan(x, sampled)
        density = SPARSE_MAX_DENSITY[_sparse.instruction_set()]
        limit = density * x.size
        if nonzeros > limit and x.shape[0] > 1:
            values = self.offset_values
            if values is None:
                values = self.offset_values = np.empty(self.n_features, x.dtype)
            if _kernels.common_values_checked(x, values):
                distances, distance_bound = _scan(x, sampled, values)
                if distances <= limit:
                    # The kernels' inputs are within bound of 0; the gradient's offset term
                    # adds |c| to the bound of each product of X.T @ delta.
                    nonzeros, self.offsets = distances, values
                    if not sampled:
                        bound = distance_bound + _kernels.max_abs_checked(values)
        share = nonzeros / max(x.size, 1)
        if measure and abs(share - density) <= MEASURED_BAND:
            sparse = self.measured_sparse(x, share)
        else:
            sparse = nonzeros <= limit
        sparse = sparse and (self.capacity + 3) * self.n_features < 2**31  # int32 indices
        if sparse and self.row_groups is None:
            dtype = self.outputs[0].dtype
            self.row_groups = _sparse.group_buffers(
                self.capacity, self.n_features, dtype, by_rows=True
            )
            if self.training:
                self.column_groups = _sparse.group_buffers(
                    self.n_features, self.capacity, dtype, by_rows=False
                )
                self.delta_copy = _delta_copy(self.capacity, self.layers[0].output_size, dtype)
        self.sparse_input = sparse
        if sparse and self.training and (self.cut is None or measure):
            self.cut = _balanced_cut(x, self.offsets)
        if not sparse:
            self.offsets = None
            if sampled:
                bound = _kernels.scan_rows_checked(x)[1]
        self.input_bound = math.inf if bound is None else bound

    def measured_sparse(self, x, share):
        """Whether the first layer runs the sparse kernels on x (share of it nonzero, or away
        from the offsets): the density limit's choice unless the other kernels ran a batch
        of x faster by MEASURED_MARGIN, measured once per process and shape."""
        layer = self.layers[0]
        key = (
            _sparse.instruction_set(),
            x.dtype.str,
            self.n_features,
            layer.output_size,
            self.capacity,
            self.offsets is not None,
            round(share, 2),
        )
        if key not in _measured_choices:
            rows = np.linspace(0, x.shape[0] - 1, min(self.capacity, x.shape[0])).astype(np.intp)
            batch = np.empty((rows.shape[0], self.n_features), x.dtype)
            _kernels.gather_rows_checked(x, rows, batch)
            sparse, dense = _first_layer_times(batch, layer, self.offsets, self.narrow[0])
            if share <= SPARSE_MAX_DENSITY[_sparse.instruction_set()]:
                _measured_choices[key] = not dense < (1 - MEASURED_MARGIN) * sparse
            else:
                _measured_choices[key] = sparse < (1 - MEASURED_MARGIN) * dense
        return _measured_choices[key]

    def use_optimizer(self, optimizer):
        """Bind `optimizer` to the gradient buffers and the model's weights (checked once)."""
        if self.update is None or self.update.optimizer is not optimizer:
            self.bound_weights = self.model.weights
            self.update = Update(optimizer, self.gradients, self.bound_weights)
            iterations = getattr(optimizer, "iterations", 0)
            self.iteration = iterations if isinstance(iterations, int) else 0

    def current_update(self):
        """The optimizer's Update, bound again if a layer's W or b was replaced by a new array
        (the optimizer's state follows the weight's position, not the array): train calls it
        after compiled(), whose Program holds the layers' current arrays."""
        if not self.program.holds(self.bound_weights):
            weights = self.model.weights
            self.bound_weights = weights
            self.update = Update(self.update.optimizer, self.gradients, weights)
            self.weight_bound = None
        return self.update

    def threads(self):
        """The thread policy of a call, as a context: one thread pool, OpenMP's.

        The kernels' parallel loops use `n_threads`, OpenMP's limit when the call starts
        (OMP_NUM_THREADS, threadpoolctl's threadpool_limits), and BLAS runs on one thread
        inside them: each GEMM is cut into blocks (fastnaive._blas.tile_grid), each block one
        single-threaded BLAS call on one of the pool's threads. The blocks depend on the
        shapes alone, so the results are the same bits at any number of threads.

        Two pools would fight: OpenMP and OpenBLAS threads each spin a while after their work
        and chase each other on a small machine (measured on 2 cores: an MNIST epoch took
        6-7 s with two threads in each pool, against 0.4 s with one pool).

        Nor does a thread more than the CPUs the process can keep busy (its affinity and its
        cgroup's CPU quota: fastnaive._cpus.usable_cpus) help: `n_threads` is at most those,
        and OpenMP's limit is lowered to it for the call (then restored), so that every
        parallel loop of the call runs on them.
        """
        requested = _kernels.max_threads()
        self.n_threads = min(requested, _cpus.usable_cpus())
        if self.n_threads < requested:
            return _CappedThreads(_cpus.capped(), _blas_pools())
        return _blas_pools()

    def gather(self, x, y, rows, sample_weight=None):
        """Return (x[rows], y[rows], sample_weight[rows] or None) in this Step's buffers."""
        n = rows.shape[0]
        if self.batch_targets is None:
            self.batch_targets = np.empty((self.capacity, *y.shape[1:]), y.dtype)
        if self.csr_input:
            if self.batch_rows is None:
                self.batch_rows = np.empty(self.capacity, np.intp)
            np.take(x.rows, rows, out=self.batch_rows[:n])
            batch = CsrBatch(x.inputs, self.batch_rows[:n])
        else:
            batch = self.batch_buffer(x.dtype)[:n]
            _kernels.gather_rows_checked(x, rows, batch)
        np.take(y, rows, axis=0, out=self.batch_targets[:n])
        weights = None
        if sample_weight is not None:
            if self.batch_weights is None:
                self.batch_weights = np.empty(self.capacity, sample_weight.dtype)
            weights = self.batch_weights[:n]
            np.take(sample_weight, rows, out=weights)
        return batch, self.batch_targets[:n], weights

    def batch_buffer(self, dtype):
        """The buffer of gathered batches, `capacity` rows of inputs."""
        if self.batch_inputs is None:
            self.batch_inputs = np.empty((self.capacity, self.n_features), dtype)
        return self.batch_inputs

    def compiled(self):
        """The Program (fastnaive._program) of this Step's layers, for its first layer's
        current kernels and the layers' current W and b arrays (built again when either
        changed). forward, backward and fused_bound run `program`: each call that uses them
        (train, compute_gradients, loss_and_correct, predict) calls this first, once."""
        program = self.program
        first = (
            _program.FIRST_EXTERNAL
            if self.csr_input
            else _program.FIRST_SPARSE
            if self.sparse_input
            else _program.FIRST_DENSE
        )
        cut = self.cut if first == _program.FIRST_SPARSE else None
        delta_copy = self.delta_copy if first == _program.FIRST_SPARSE else None
        if (
            program is None
            or program.first != first
            or program.shifted != (self.offsets is not None)
            or self.program_cut != cut
            or not program.uses(self.layers)
        ):
            padding = [None] * (len(self.layers) - len(self.deltas))
            program = self.program = _program.Program(
                self.layers,
                self.dropouts,
                self.codes,
                self.head_codes,
                self.outputs,
                padding + self.deltas,
                self.dropped,
                self.pre,
                self.gradients,
                first,
                self.row_groups,
                self.column_groups,
                self.narrow,
                self.offsets,
                cut,
                delta_copy,
                self.hidden_groups,
                self.hidden_densities,
            )
            self.program_cut = cut
        return program

    def forward(self, x, out=None, training=False, head=False, first_row=0):
        """Fill the layers' outputs for the rows of x; return the last one's.

        training: dropout on, for the rows first_row... of the global batch, and GELU's
        pre-activations kept; head: the last layer's activation applied even where the loss
        absorbs it (softmax excepted: see predict). With `out`, the last layer writes there.
        """
        n = x.shape[0]
        program = self.program
        last = len(self.layers) - 1
        if self.csr_input:
            # The first layer's product on the matrix's nonzeros; the Program runs the rest.
            pre = self.pre[0] if training else None
            z = out if last == 0 and out is not None else self.outputs[0][:n]
            layer = self.layers[0]
            x.forward(layer.W, layer.b, z if pre is None else pre[:n], self.n_threads)
            x = None
        program.forward(x, n, training, head, first_row, self.iteration, out, self.n_threads)
        if training and self.dropped[last] is not None:
            return self.dropped[last][:n]
        return out if out is not None else self.outputs[last][:n]

    def loss_and_hits(self, y, sample_weight=None, scale=None, count=True):
        """Return (scale * sum_i w_i loss_i of the last outputs (scale None: 1 / n), accuracy's
        hits; 0 when count is False), the loss's gradient in deltas[-1]."""
        n = y.shape[0]
        return _losses.loss_and_hits(
            self.loss.code,
            self.outputs[-1][:n],
            y,
            self.deltas[-1][:n],
            sample_weight,
            scale,
            self.n_threads,
            count,
        )

    def penalty(self):
        """The L2 penalty sum_l l2_l * sum(W_l**2) of the current weights."""
        if not self.penalised:
            return 0.0
        return sum(layer.l2 * _losses.sum_squares_checked(layer.W) for layer in self.penalised)

    def backward(self, x, gemm_scale=None, first_row=0, rule=None):
        """Back-propagate deltas[-1] through the layers.

        With gemm_scale and rule None the weight gradients go to `gradients` (without the L2
        terms: add_penalty_gradients adds them) and None is returned; otherwise nothing is
        written to the weights, and the list of kernel calls that update each layer in
        place is returned, to be committed together once every input gradient has used the
        old weights: W := W + gemm_scale * (dW + 2 l2 W) inside the weight-gradient GEMM (the
        L2 term shrinks W, not b), or `rule` (Update.rule: an element rule and its state
        arrays) applied to each block of dW + 2 l2 W and db as it is produced
        (Program.apply_rule; not for a scipy.sparse batch). A reducer's layer_ready is told
        of each layer's gradients as soon as they are final, before that layer's input
        gradient.
        """
        n = x.shape[0]
        program = self.program
        gradients = gemm_scale is None and rule is None
        inputs = None if self.csr_input else x
        ready = self.layer_ready if gradients else None
        bounds = self.bounds if gradients else None
        program.backward(
            inputs,
            n,
            gradients,
            first_row,
            self.iteration,
            ready,
            self.flat,
            bounds,
            self.n_threads,
        )
        layer = self.layers[0]
        if gradients:
            if self.csr_input:
                dW, db = self.gradients[0], self.gradients[1]
                function, arguments = x.param_grad_call(
                    self.deltas[0][:n], 1.0, 0.0, dW, db, self.n_threads
                )
                function(*arguments)
                if ready is not None:
                    ready(self.flat, self.bounds[0], self.bounds[2])
            return None
        if rule is not None:
            return [(program.apply_rule, (inputs, n, *rule, self.n_threads))]
        calls = [(program.apply, (inputs, n, gemm_scale, self.n_threads))]
        if self.csr_input:
            delta = self.deltas[0][:n]
            if layer.l2:
                # L2 weighs W alone: the bias's step goes through its gradient buffer (zeroed
                # here, so beta scales nothing there) and is added after, as an SGD step.
                beta, db = 1.0 + 2 * gemm_scale * layer.l2, self.gradients[1]
                db.fill(0)
                calls.append(
                    x.param_grad_call(delta, gemm_scale, beta, layer.W, db, self.n_threads)
                )
                calls.append((_kernels.axpy_checked, (db, layer.b, 1.0)))
            else:
                calls.append(
                    x.param_grad_call(delta, gemm_scale, 1.0, layer.W, layer.b, self.n_threads)
                )
        return calls

    def add_penalty_gradients(self):
        """gradients dW_l += 2 l2_l W_l: the L2 penalty's part, added once per step."""
        for i, layer in enumerate(self.layers):
            if layer.l2:
                _kernels.axpy_checked(
                    layer.W.reshape(-1), self.gradients[2 * i].reshape(-1), 2 * layer.l2
                )

    def compute_gradients(self, x, y, sample_weight=None):
        """Return the batch's mean loss (with the L2 penalty), its gradients in `gradients`.

        The forward pass is the training one: dropout on, for this Step's current step.
        """
        self.compiled()
        self.forward(x, training=True)
        loss = self.loss_and_hits(y, sample_weight, count=False)[0] + self.penalty()
        self.backward(x)
        self.add_penalty_gradients()
        self.iteration += 1
        return loss

    def train(self, x, y, n_global=None, first_row=0, sample_weight=None):
        """One optimizer step on the batch; return (loss, accuracy hits) before it.

        x, y (and sample_weight) are this process's rows of a batch of n_global (default: all
        of it), starting at row first_row: its loss and gradients are the batch means, summed
        over processes by the reducer; the loss includes the L2 penalty. A non-finite loss
        leaves the weights as they were; a step that would leave a non-finite weight or
        optimizer state is undone and raises FloatingPointError.
        """
        n = x.shape[0]
        n_global = n if n_global is None else n_global
        program = self.compiled()
        update = self.current_update()
        loss, correct = 0.0, 0
        penalty = self.penalty()
        count = self.count_call
        if self.reducer is None:
            # The optimizer's step fused into the weight-gradient kernels: W := W + scale *
            # X.T @ delta (SGD) or an element rule (momentum, Adam) on each block.
            scale = update.gemm_scale
            rule = None
            if scale is None and not self.csr_input:
                rule = update.rule(self.outputs[0].dtype)
            if scale is not None or rule is not None:
                weight_bound = self.current_weight_bound()
                if n and not self.csr_input and self.compiled_passes:
                    # The passes, the bound and, where it allows, the step: one call.
                    element_rule, state = rule if rule is not None else (None, None)
                    loss, correct, bound, applied = program.train_and_update(
                        x,
                        n,
                        self.loss.code,
                        y,
                        sample_weight,
                        1.0 / n_global,
                        penalty,
                        first_row,
                        self.iteration,
                        scale,
                        weight_bound,
                        self.input_bound,
                        self.n_threads,
                        element_rule,
                        state,
                        update.slot_bounds,
                        self.limit,
                        update.counter,
                        self.counter,
                    )
                    if bound is None:
                        return loss, correct
                    if applied:
                        self.weight_bound = bound
                        return loss, correct
                    # The bound (its change bound taken) is the limit's or more: guarded.
                    calls = [(program.apply, (x, n, scale, self.n_threads))]
                    if rule is not None:
                        calls = [(program.apply_rule, (x, n, *rule, self.n_threads))]
                else:
                    if n:
                        self.forward(x, training=True, first_row=first_row)
                        loss, correct = self.loss_and_hits(y, sample_weight, 1.0 / n_global)
                    loss += penalty
                    if not math.isfinite(loss):
                        return loss, correct
                    calls = self.backward(x, scale, first_row, rule)
                    if rule is None:
                        bound = self.fused_bound(x, scale)
                    else:
                        bound = self.gradient_bound(x)
                        change, state = update.change_bound(bound)
                        bound = _kernels.largest_bound_checked(weight_bound + change, state, bound)
                self.commit([*calls, *update.fused_calls(), count], bound, update)
                return loss, correct
        if n:
            self.forward(x, training=True, first_row=first_row)
            loss, correct = self.loss_and_hits(y, sample_weight, 1.0 / n_global)
        if self.reducer is None:
            loss += penalty
            if not math.isfinite(loss):
                return loss, correct
            self.backward(x, first_row=first_row)
        else:
            if n:
                self.backward(x, first_row=first_row)
            else:
                self.flat.fill(0)
                if self.layer_ready is not None:
                    for i in reversed(range(len(self.layers))):
                        self.layer_ready(self.flat, self.bounds[2 * i], self.bounds[2 * i + 2])
            self.flat[-2], self.flat[-1] = loss, correct
            self.reducer.reduce(self.flat)
            loss, correct = float(self.flat[-2]) + penalty, int(round(float(self.flat[-1])))
            if not math.isfinite(loss):
                self.iteration += 1
                return loss, correct
        self.add_penalty_gradients()
        gradient_bound = _kernels.max_abs_checked(self.flat[:-2])
        change, state = update.change_bound(gradient_bound)
        bound = _kernels.largest_bound_checked(
            self.current_weight_bound() + change, state, gradient_bound
        )
        if update.atomic:
            self.commit([*update.calls(), count], bound, update)
        else:
            self.commit([(update, ()), count], bound, update)
        return loss, correct

    def current_weight_bound(self):
        """An upper bound of max |w| over the model's weights, measured when unknown (by the
        Program, which train has made current with compiled())."""
        if self.weight_bound is None:
            self.weight_bound = self.program.weight_bound(self.n_threads)
        return self.weight_bound

    def fused_bound(self, x, scale):
        """The largest magnitude the fused update W := beta W + scale X.T @ delta (and its
        GEMM's sums) can reach in any layer, from the largest inputs and deltas."""
        inputs = None if self.csr_input else x
        return self.program.fused_bound(
            inputs, x.shape[0], scale, self.current_weight_bound(), self.input_bound
        )

    def gradient_bound(self, x):
        """An upper bound of |g| over the gradients an element rule's step (Program.apply_rule)
        takes, from the largest inputs and deltas."""
        inputs = None if self.csr_input else x
        return self.program.gradient_bound(
            inputs, x.shape[0], self.current_weight_bound(), self.input_bound
        )

    def commit(self, calls, bound, update):
        """Run the step's writes, `calls`, as one sequence (fastnaive._kernels.run_calls).

        `bound` is the largest magnitude they can leave in the weights, the optimizer's state
        and the sums on the way: below the dtype's range (with a margin), they run as they
        are, and it becomes the weights' bound. Otherwise the weights and the state are
        copied first; a step that leaves a non-finite value is undone and raises
        FloatingPointError.
        """
        if bound < self.limit:
            _kernels.run_calls(calls)
            self.weight_bound = bound
            return
        weights = self.model.weights
        saved = [w.copy() for w in weights]
        optimizer = update.optimizer
        state = optimizer.get_state() if update.atomic else None
        iteration = self.iteration
        _kernels.run_calls(calls)
        self.weight_bound = None
        written = list(weights)
        if state is not None:
            written += [a for slot in optimizer.get_state()["slots"] for a in slot]
        if all(_kernels.max_abs_checked(a.reshape(-1)) < math.inf for a in written):
            return
        copy = _kernels.copy_checked
        _kernels.run_calls([(copy, (s.reshape(-1), w.reshape(-1))) for s, w in zip(saved, weights)])
        if state is not None:
            optimizer.set_state(state)
        self.iteration = iteration
        dtype = self.outputs[0].dtype
        raise FloatingPointError(
            f"The update overflowed {dtype} (with {optimizer!r}); the step was undone, leaving "
            f"the weights of the last finite step. Try a smaller learning rate."
        )

    def loss_and_correct(self, x, y, sample_weight=None):
        """Return the summed loss (sum_i w_i loss_i, without the penalty) and accuracy's hits
        over (x, y), evaluated without dropout."""
        total_loss, correct = 0.0, 0
        self.compiled()
        for start in range(0, x.shape[0], self.capacity):
            stop = min(start + self.capacity, x.shape[0])
            self.forward(x[start:stop])
            weights = None if sample_weight is None else sample_weight[start:stop]
            loss, hits = self.loss_and_hits(y[start:stop], weights, 1.0)
            total_loss, correct = total_loss + loss, correct + hits
        return total_loss, correct

    def predict(self, x, out):
        """out := the model's outputs for x (probabilities after a softmax or sigmoid head)."""
        self.compiled()
        for start in range(0, x.shape[0], self.capacity):
            stop = min(start + self.capacity, x.shape[0])
            self.forward(x[start:stop], out[start:stop], head=True)
        if self.layers[-1].activation == "softmax":
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


def _first_layer_times(x, layer, offsets, narrow):
    """Seconds that the sparse kernels (grouping, X @ W and the weight gradient) and the
    GEMMs (narrow: the narrow kernels) take to run `layer` on the batch x (the sparse ones on
    its distances from offsets, if given), each on one thread, best of MEASURE_ROUNDS after
    a first run, the two alternating."""
    n, k = x.shape
    m, dtype = layer.output_size, x.dtype
    W, b = layer.W, layer.b
    # On 64-byte boundaries, as a Step's deltas and weights are: the sparse products run
    # 25-40% slower on misaligned rows (a weight gradient held to AVX2 on Zen 4: 1359 us into
    # NumPy's arrays, 16 bytes off, against 744), which tipped Fashion-MNIST's choice to the
    # GEMMs in some processes, though its steps run faster on the sparse kernels.
    z, partial = aligned_empty((n, m), dtype), aligned_empty((n, m), dtype)
    dW, db = aligned_empty(W.shape, dtype), aligned_empty(b.shape, dtype)
    delta = aligned_empty((n, m), dtype)
    delta.fill(1e-3)
    copy = _delta_copy(n, m, dtype)
    rows = _sparse.group_buffers(n, k, dtype, by_rows=True)
    columns = _sparse.group_buffers(k, n, dtype, by_rows=False)
    pack = _sparse.pack_buffer(k, m, dtype)

    def sparse():
        _sparse.group_rows_checked(x, *rows, n_threads=1, offsets=offsets)
        _sparse.group_columns_checked(x, *columns, n_threads=1, offsets=offsets)
        _sparse.sparse_forward_checked(*rows, W, b, True, z, 1, partial, offsets, pack=pack)
        _sparse.sparse_param_grad_checked(*columns, delta, 1.0, 0.0, dW, db, 1, offsets, None, copy)

    def dense():
        if narrow:
            _sparse.narrow_forward_checked(x, W, b, _activations.RELU, z, 1)
            _sparse.narrow_param_grad_checked(x, delta, 1.0, 0.0, dW, db, 1)
        else:
            _kernels.dense_forward_checked(x, W, b, _activations.RELU, z, 1)
            _kernels.dense_param_grad_checked(x, delta, 1.0, 0.0, dW, db, 1)

    with _blas_pools():
        runs = (sparse, dense)
        for run in runs:
            run()
        times = [math.inf, math.inf]
        # The two alternate, so that a slow spell of the machine falls on both.
        for _ in range(MEASURE_ROUNDS):
            for i, run in enumerate(runs):
                start = time.perf_counter()
                run()
                times[i] = min(times[i], time.perf_counter() - start)
    return tuple(times)


def narrow_layers(layers):
    """Per layer, True where its products run on the narrow kernels: at most NARROW_MAX_WIDTH
    outputs, on an instruction set where they beat the BLAS."""
    fast = _sparse.instruction_set() in NARROW_INSTRUCTION_SETS
    return [fast and layer.output_size <= NARROW_MAX_WIDTH for layer in layers]


def _hidden_groups(layers, codes, narrow, capacity, dtype, input_gradient=True):
    """Per layer, the buffers of its training products on its inputs' nonzeros (the Program's
    hidden_groups: row groups, column groups, delta's copy, and, where the layer is a ReLU's
    and input_gradient, its input gradient's row groups of delta), or None where it runs
    GEMMs: the first layer, narrow layers, and layers whose inputs are not a ReLU's outputs or
    that hold fewer than SPARSE_HIDDEN_MIN_WEIGHTS weights."""
    groups = [None] * len(layers)
    for i in range(1, len(layers)):
        k, m = layers[i].W.shape
        if (
            not narrow[i]
            and codes[i - 1] == _activations.RELU
            and k * m >= SPARSE_HIDDEN_MIN_WEIGHTS
            and (capacity + 3) * k < 2**31  # int32 indices
        ):
            inputs = None
            if input_gradient and codes[i] == _activations.RELU and (capacity + 3) * m < 2**31:
                inputs = _sparse.group_buffers(capacity, m, dtype, by_rows=True)
            groups[i] = (
                _sparse.group_buffers(capacity, k, dtype, by_rows=True),
                _sparse.group_buffers(k, capacity, dtype, by_rows=False),
                _delta_copy(capacity, m, dtype),
                inputs,
            )
    return groups


def _scan(x, sampled, offsets=None):
    """(x's nonzeros, max |x|) (of x - offsets with offsets): all of x read in one parallel
    pass, or, sampled, SCAN_BLOCKS blocks of its rows, the count scaled to all of x, and
    None for the maximum."""
    if not sampled:
        return _kernels.scan_rows_checked(x, offsets=offsets)
    n, rows = x.shape[0], SCAN_BLOCK_ROWS
    counted = 0
    for block in range(SCAN_BLOCKS):
        start = block * (n - rows) // (SCAN_BLOCKS - 1)
        counted += _kernels.scan_rows_checked(x[start : start + rows], offsets=offsets)[0]
    return counted * n / (SCAN_BLOCKS * rows), None


def _delta_copy(capacity, m, dtype):
    """The buffer where the sparse weight gradient copies the first layer's delta (capacity,
    m) to read it with the rows _sparse.delta_stride gives, or None where it reads delta."""
    stride = _sparse.delta_stride(m, dtype)
    return aligned_empty((capacity, stride), dtype) if stride > m else None


def _balanced_cut(x, offsets):
    """Where the sparse kernels cut x's features into their two parts (fastnaive._sparse.
    part_bounds): the cut before which half the nonzeros of up to CUT_SAMPLE_ROWS rows spread
    over x lie (of their distances from offsets, with offsets), so that each part's thread
    groups, multiplies and updates about half of them (MNIST: 47.8% before the middle,
    features 0-399; 50.8% before feature 408); None (the middle) for one part or no
    nonzeros."""
    choices = _sparse.cut_choices(x.shape[1])
    if not choices or x.shape[0] == 0:
        return None
    rows = np.linspace(0, x.shape[0] - 1, min(x.shape[0], CUT_SAMPLE_ROWS)).astype(np.intp)
    sample = x[rows] if offsets is None else x[rows] != offsets
    before = np.concatenate([[0], np.cumsum(np.count_nonzero(sample, axis=0))])
    if before[-1] == 0:
        return None
    # The middle is the first choice: it wins ties.
    return min(choices, key=lambda cut: abs(2 * int(before[cut]) - int(before[-1])))


def _views(flat, arrays):
    """Views of `flat` shaped like each of `arrays`, in order, laid end to end."""
    views, offset = [], 0
    for array in arrays:
        views.append(flat[offset : offset + array.size].reshape(array.shape))
        offset += array.size
    return views


def _blas_pools():
    """A reusable context that runs the loaded BLAS libraries (SciPy's among them) on one
    thread and restores their thread counts after."""
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas.load()
        _blas_controller = _OneBlasThread(ThreadpoolController().select(user_api="blas"))
    return _blas_controller


class _CappedThreads:
    """Step.threads' context where OpenMP's limit exceeds the usable CPUs: `cap` (a
    _cpus.capped) and BLAS on one thread (`pools`), both undone after."""

    def __init__(self, cap, pools):
        self.cap, self.pools = cap, pools

    def __enter__(self):
        try:
            self.cap.__enter__()
            self.pools.__enter__()
        except BaseException:
            self.cap.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *error):
        try:
            self.pools.__exit__(*error)
        finally:
            self.cap.__exit__(*error)


# OpenBLAS's thread-count functions, under the names its builds export (SciPy's and NumPy's
# wheels prefix them, the 64-bit-integer builds add a suffix).
_OPENBLAS_PREFIXES = ("", "scipy_")
_OPENBLAS_SUFFIXES = ("", "64_")


class _OneBlasThread:
    """BLAS on one thread for a call: OpenBLAS's own get/set functions, found through ctypes
    and called from compiled code (fastnaive._blas.one_blas_thread: well under a
    microsecond, where threadpoolctl's limit takes about 60 and the ctypes calls 2, too much
    for the per-batch entry points); threadpoolctl's limit for any other BLAS."""

    def __init__(self, controller):
        import ctypes

        self.functions, others = [], []
        for library in controller.lib_controllers:
            found = None
            if library.internal_api == "openblas":
                handle = ctypes.CDLL(library.filepath)
                for prefix in _OPENBLAS_PREFIXES:
                    for suffix in _OPENBLAS_SUFFIXES:
                        get = getattr(handle, f"{prefix}openblas_get_num_threads{suffix}", None)
                        put = getattr(handle, f"{prefix}openblas_set_num_threads{suffix}", None)
                        if found is None and get is not None and put is not None:
                            get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                            found = (get, put)
            if found is None or len(self.functions) == _blas.MAX_THREAD_LIBRARIES:
                others.append(library)
            else:
                self.functions.append(found)
        _blas.bind_thread_counts(self.functions)
        self.others = controller if others else None
        # A stack, for contexts nested or entered by several Python threads: whatever the
        # order they end in, the last one restores the counts the first one found.
        self.saved = []

    def __enter__(self):
        counts = _blas.one_blas_thread()
        others = self.others.limit(limits=1) if self.others is not None else None
        self.saved.append((counts, others))
        return self

    def __exit__(self, *error):
        counts, others = self.saved.pop()
        if others is not None:
            others.restore_original_limits()
        _blas.restore_blas_threads(counts)
