# Design: the first layer's two GEMMs, X @ W1 and X.T @ delta1, over the nonzeros of the
# input batch X only. MNIST pixels are 81% zero, so skipping them is exact and leaves a fifth
# of the dense multiply-adds; only the summation order changes (and NaN or Inf in W or delta
# reaches only the outputs whose X entry is nonzero: the dense product has 0 * Inf = NaN).
# What bounds a sparse-times-dense product on a CPU is loading the dense rows that the
# nonzeros pick (one row of W per nonzero, from L2), not the FMAs, so X is taken four lines at
# a time (group_rows: four images, for X @ W; group_columns: four neighbouring pixels, for
# X.T @ delta) and each row of W or delta is loaded once for all the lines of a group that
# are nonzero there; the quads are sorted by which lines are nonzero, so that no FMA
# multiplies by zero (see sparse_kernels.h). Both layouts go into caller-provided buffers
# (group_buffers), so no kernel allocates. The inner loops are C, compiled for AVX-512, AVX2
# and baseline x86-64 and chosen at import. In X @ W the columns of W are cut into blocks
# (forward_width), whose slab of W stays in L2 while the whole batch passes (each block reads
# the batch's quads once).
# The threads split W by rows, the features, in every pass: X @ W is summed over two parts of
# the features (feature_parts: their number fixed by the shape, whatever the number of
# threads; where the second starts, `cut`, is the caller's, fastnaive.engine placing it where
# the training inputs' nonzeros halve, so that both threads get as much work: MNIST's lie
# 47.8% before the middle, and a cut at feature 404-408 instead of 400 took a two-thread book
# step's train 400 -> 392 us on Zen 4), each part's row groups made, its products summed and
# its rows of W updated by the same thread
# (on more threads than parts, a team of them splits the part's columns and rows), and the
# two partial sums added after. Splitting X @ W by W's columns instead, while the update
# splits W's rows, moved W between the cores every step: on a 2-vCPU KVM guest whose vCPUs
# sat on two chiplets, a two-thread book epoch took twice as long as on one chiplet (0.23-0.25
# s against 0.115), longer than one thread; split by rows, 0.16-0.17 s (BENCHMARKS.md). Any
# column split of a row-major W did, even with no element shared. In X.T @ delta, W's update (and the optimizer's state) is cut into
# chunks of whole rows, each a stretch of memory that no other thread's chunk shares a cache
# line with: taking W's columns there made the threads' optimizer steps interleave every
# 512 bytes along each row, and Adam's step then ran at half speed on two threads. OpenMP
# threads take disjoint parts, so no atomics are needed, and every output element is one
# kernel call's (or two parts' sums added), so results do not depend on the number of
# threads. W and delta are best 64-byte aligned (NumPy promises 16): products on misaligned
# rows are 25-30% slower. Index buffers are user input, so the `def` wrappers check them
# before any kernel reads through them.
# Inputs that sit mostly at one value per feature other than 0 (standardised or shifted
# images) are grouped as their distances from those values, the offsets c (fastnaive.engine
# picks them): the grouping subtracts c as it reads X, so no batch of distances is written
# (it took about 30 us of a two-thread step's serial time on Zen 4, dense MNIST). X @ W
# adds c @ W (each part's rows of it, computed by the part's thread before its products, as
# their bias) and X.T @ delta adds outer(c, sum_rows(delta)) (the grouped product's bias,
# scaled per row of dW by c), both exact in real numbers. In floats, a row of X that is all
# zeros has X @ W + b = b exactly, which the two sums, -c @ W and c @ W in different orders,
# miss by a rounding: at a zero bias, relu's derivative there would follow that rounding's
# sign (the dense path's is 0). group_and_forward gives such rows act(b) after the products
# (exact_zero_rows: a test of each row that stops at its first nonzero).
# The narrow products (narrow_forward, narrow_input_grad, narrow_param_grad) are the dense
# products of a layer of at most NARROW_MAX outputs, a classifier's head, without the BLAS
# (narrow_kernels.h): compiled per instruction set like the sparse ones and chosen with them
# by select_instruction_set, cut among threads into blocks of rows (forward), slices of rows
# (the input gradient: each element is one dot product wherever the cut falls) or blocks of
# W's rows (the weight gradient), so that the bits do not depend on the threads; on one
# thread they loop outside any parallel region (see fastnaive._kernels).
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy
import numpy as np

from fastnaive._memory import aligned_empty

from fastnaive._activations cimport ELU_CODE, activate
from fastnaive._kernels cimport Rule, bias_grad, max_abs, rule_step, scan_from, transpose_block

cdef extern from "sparse_kernels.h" nogil:
    void grouped_product_f "fastnaive_grouped_product_f"(
        Py_ssize_t n_groups, const int* starts, const int* index, const float* quads,
        const float* B, Py_ssize_t ldb, const float* bias, const float* scales, float alpha,
        float beta, int relu, float* out, Py_ssize_t ldo, Py_ssize_t n_out, Py_ssize_t j0,
        Py_ssize_t j1)
    void grouped_product_d "fastnaive_grouped_product_d"(
        Py_ssize_t n_groups, const int* starts, const int* index, const double* quads,
        const double* B, Py_ssize_t ldb, const double* bias, const double* scales,
        double alpha, double beta, int relu, double* out, Py_ssize_t ldo, Py_ssize_t n_out,
        Py_ssize_t j0, Py_ssize_t j1)
    Py_ssize_t group_f "fastnaive_group_f"(bint by_rows, const float* X, Py_ssize_t n,
                                           Py_ssize_t k, Py_ssize_t ldx, Py_ssize_t g,
                                           int* starts, int* index, float* quads,
                                           const float* offsets)
    Py_ssize_t group_d "fastnaive_group_d"(bint by_rows, const double* X, Py_ssize_t n,
                                           Py_ssize_t k, Py_ssize_t ldx, Py_ssize_t g,
                                           int* starts, int* index, double* quads,
                                           const double* offsets)
    void offset_sums_f "fastnaive_offset_sums_f"(
        const float* c, const float* W, Py_ssize_t ldw, Py_ssize_t rows, const float* init,
        float* u, Py_ssize_t j0, Py_ssize_t j1)
    void offset_sums_d "fastnaive_offset_sums_d"(
        const double* c, const double* W, Py_ssize_t ldw, Py_ssize_t rows, const double* init,
        double* u, Py_ssize_t j0, Py_ssize_t j1)
    void add_parts_f "fastnaive_add_parts_f"(float* out, const float* part, Py_ssize_t count,
                                             int relu)
    void add_parts_d "fastnaive_add_parts_d"(double* out, const double* part,
                                             Py_ssize_t count, int relu)
    int select_isa "fastnaive_sparse_select_isa"(int widest)
    void narrow_forward_f "fastnaive_narrow_forward_f"(
        const float* X, Py_ssize_t ldx, Py_ssize_t k, const float* W, Py_ssize_t m,
        const float* b, float* Z, Py_ssize_t i0, Py_ssize_t i1)
    void narrow_forward_d "fastnaive_narrow_forward_d"(
        const double* X, Py_ssize_t ldx, Py_ssize_t k, const double* W, Py_ssize_t m,
        const double* b, double* Z, Py_ssize_t i0, Py_ssize_t i1)
    void narrow_input_f "fastnaive_narrow_input_f"(
        const float* delta, Py_ssize_t n, Py_ssize_t m, const float* W, float* dX,
        Py_ssize_t ldo, Py_ssize_t c0, Py_ssize_t c1, const float* relu_of)
    void narrow_input_d "fastnaive_narrow_input_d"(
        const double* delta, Py_ssize_t n, Py_ssize_t m, const double* W, double* dX,
        Py_ssize_t ldo, Py_ssize_t c0, Py_ssize_t c1, const double* relu_of)
    void narrow_param_f "fastnaive_narrow_param_f"(
        const float* X, Py_ssize_t ldx, const float* delta, Py_ssize_t n, Py_ssize_t m,
        float alpha, float beta, float* dW, Py_ssize_t c0, Py_ssize_t c1)
    void narrow_param_d "fastnaive_narrow_param_d"(
        const double* X, Py_ssize_t ldx, const double* delta, Py_ssize_t n, Py_ssize_t m,
        double alpha, double beta, double* dW, Py_ssize_t c0, Py_ssize_t c1)
    int max_threads "fastnaive_sparse_max_threads"()

# Elements per block of the weight gradient's slabs of columns: 128 floats or 64 doubles, a
# whole number of tiles on every ISA.
cdef Py_ssize_t BLOCK_BYTES = 512
# A cache line (delta_stride).
cdef Py_ssize_t LINE_BYTES = 64
# Columns of W per block of X @ W: at most 1 KB of each row (forward_width); threads that
# share a part of the features split its columns in units of 256 bytes (the widest tile,
# AVX-512's four vectors). Blocks are whole tiles, so every output element is the same
# tile's sum at any block width. A book batch's X @ W on one Zen 5 core, W read in place:
# 207-209 us in 1 KB blocks, 215-216 in 512-byte ones; on W's copies FORWARD_SLAB_BYTES
# narrows the blocks of parts of more than 128 features.
cdef Py_ssize_t FORWARD_BYTES = 1024
cdef Py_ssize_t MIN_BLOCK_BYTES = 256
# A part of the features' slab of W (its rows x a block's columns) at most this large, the
# block halved down to MIN_BLOCK_BYTES until it fits (forward_width): an eighth of L2 on
# Zen 4 and Zen 5, a quarter on Zen 3, so that the slab's copy (packed_block) stays in L2
# beside the groups and the outputs that stream past it. One Zen 4 core, X @ W on its
# copies, 50% nonzero at random, 128 KB slabs against 512 KB (blocks of 256 or 512 bytes
# against 512 bytes or 1 KB), best of 7: 128 x 512 -> 512 466 against 480 us (held to
# AVX2 679 against 704); 128 x 1024 -> 1024 2208 against 2443 (3069, 3451); 1024 x 512 ->
# 512 4124 against 4251 (5794, 5941); 256 x 2048 -> 2048 18.1 against 19.2 ms (22.8, 24.8;
# two threads 8.6 against 9.2); MNIST's and Fashion-MNIST's first layer 1-6% faster (one
# and two threads, both ISAs).
cdef Py_ssize_t FORWARD_SLAB_BYTES = 1 << 17
# X @ W reads each block's slab of W from a copy of it whose rows are an odd number of
# lines apart (pack_length), where the part's rows of W span PACK_MIN_BYTES or more and the
# groups reuse each of them often enough (PACK_MIN_QUADS): W's own rows, a power of two of
# lines apart (2 KB for 512 floats, 8 KB for 2048), then fall into few of L2's and L1's sets,
# more of them than those sets hold, so that the slab leaves L2 between one group of rows
# and the next. Its cost: one copy of W per product. On one Zen 4 core (the same bits either
# way): Fashion-MNIST's X @ W (128 x 784 -> 512, parts of 784 KB) held to AVX2 851-902 ->
# 761-780 us, on AVX-512 level (632-713 -> 624-668); at 50% nonzero on AVX-512, 256 x 2048
# -> 2048 20.3-24.4 -> 15.4-17.1 ms, 128 x 1024 -> 1024 2241 -> 1794 us, 128 x 512 -> 512
# (parts of 512 KB) 507 -> 489; smaller W lose 5-15% to the copy (128 x 256 -> 256: 128 ->
# 137 us, 128 x 784 -> 64: 95 -> 102; held to AVX2 202 -> 209 and 145 -> 151).
cdef Py_ssize_t PACK_MIN_BYTES = 1 << 19
# X @ W over the first layer's features is summed in MAX_PARTS parts of them (W's rows), at
# least PART_MIN_FEATURES each, or in one part; see feature_parts.
cdef enum:
    MAX_PARTS = 2
    # The most threads whose maxima a pass keeps apart before taking the largest (the narrow
    # input gradient's slices of rows, the row grouping's slots).
    PEAK_SLOTS = 64
    # exact_zero_rows's test of a row: elements per block.
    ZERO_BLOCK = 32
cdef Py_ssize_t PART_MIN_FEATURES = 64
# Below this many multiply-adds, or quads to sort, a parallel region costs more than it saves.
cdef Py_ssize_t PARALLEL_MIN_PRODUCTS = 1 << 18
cdef Py_ssize_t PARALLEL_MIN_QUADS = 1 << 13
# The narrow products' (a 10-output head's) threshold: their kernels run near the core's
# peak, and on 2 threads a deep model's 128 x 128 x 10 head products (2^17.3 multiply-adds)
# gain more than their region costs (deep Adam, Zen 4: 0.224 -> 0.221 s an epoch).
cdef Py_ssize_t NARROW_PARALLEL_MIN = 1 << 16
# Rows of X @ W per block of the narrow forward product.
cdef Py_ssize_t NARROW_ROWS = 32
# The weight gradient's columns, in slabs whose part of delta (batch rows x slab) fits
# SLAB_BYTES, so that it stays in L2 while a thread's groups pass (a book batch's whole
# delta: 256 KB).
cdef Py_ssize_t SLAB_BYTES = 1 << 18
INSTRUCTION_SETS = ("baseline", "avx2", "avx512")
# Per instruction set, the multiple of 64-byte lines apart at which rows of delta are copied
# further apart for the weight gradient (0: never; delta_stride).
PAD_LINES = (0, 2, 64)
# Per instruction set, the nonzero quads per feature of a part (the groups that read each
# of its rows of W, on average) from which X @ W copies the part's slabs (forward_share).
# In fit, one Zen 4 core, 784-512-10 (parts of 784 KB), seconds a step on the copies
# against W in place: AVX-512, MNIST at batch 128 (12.5 quads a feature) 3-11% more, Fashion-
# MNIST (25) 3-6% more, MNIST at batch 1024 (99) 3% less, the wide model's hidden layer
# (52-53) 4-5% less; held to AVX2, MNIST level, Fashion-MNIST 5-8% less. Two threads, each
# on its own part: level in all four at batch 128. A slab that L2 keeps needs fewer reads
# to pay for its copy where the product is slower (AVX2's half-width vectors).
PACK_MIN_QUADS = (16, 16, 40)
# The widest layer the narrow products serve (narrow_kernels.h).
NARROW_WIDTH = NARROW_MAX
cdef int _isa = select_isa(2)
cdef Py_ssize_t _pack_min_quads = PACK_MIN_QUADS[_isa]


cdef inline const int* first_index(const int[::1] a) noexcept nogil:
    """&a[0], or NULL when a is empty (then no list has entries to read)"""
    return &a[0] if a.shape[0] > 0 else NULL


cdef inline const floating* first_quad(const floating[:, ::1] a) noexcept nogil:
    """&a[0, 0], or NULL when a is empty (then no list has entries to read)"""
    return &a[0, 0] if a.shape[0] > 0 else NULL


cdef Py_ssize_t feature_parts(Py_ssize_t k) noexcept nogil:
    """The parts that X @ W sums over, of k features: fixed by k, so that the bits do not
    depend on the number of threads"""
    return MAX_PARTS if k >= MAX_PARTS * PART_MIN_FEATURES else 1


cdef Py_ssize_t starts_length(Py_ssize_t n_lines, Py_ssize_t n_positions,
                              bint by_rows) noexcept nogil:
    """The length of a layout's starts (group_buffers): PATTERNS per group of lines, and for
    rows per part of the features"""
    return PATTERNS * (feature_parts(n_positions) if by_rows else 1) * n_groups(n_lines)


cdef inline Py_ssize_t default_cut(Py_ssize_t k) noexcept nogil:
    """The second part's first feature when nothing is known of the inputs: the middle,
    rounded to a multiple of 16 features (64 bytes of a float row of X)"""
    return (k // 2 + 8) // 16 * 16


cdef inline Py_ssize_t part_start(Py_ssize_t k, Py_ssize_t parts, Py_ssize_t part,
                                  Py_ssize_t cut) noexcept nogil:
    """The first feature of `part` of `parts` (k for part = parts), the second part's being
    `cut` (a multiple of GROUP, checked by checked_cut)"""
    if part >= parts:
        return k
    return 0 if part == 0 else cut


cdef struct Share:
    # A slot's parts [part0, part1), and its rank in the team of `team` slots that share
    # them (team 1: the parts are the slot's alone).
    Py_ssize_t part0, part1, rank, team


cdef inline Share share_of(Py_ssize_t slot, Py_ssize_t slots, Py_ssize_t parts) noexcept nogil:
    """The parts that slot `slot` of `slots` works on: whole parts where there are no more
    slots than parts, else one part, shared by a team of slots"""
    cdef Share s
    cdef Py_ssize_t first
    s.part0 = slot * parts // slots
    if slots <= parts:
        s.part1 = (slot + 1) * parts // slots
        s.rank, s.team = 0, 1
    else:
        s.part1 = s.part0 + 1
        first = (s.part0 * slots + parts - 1) // parts
        s.rank = slot - first
        s.team = (s.part1 * slots + parts - 1) // parts - first
    return s


cdef inline Py_ssize_t quads_of(const int* starts, Py_ssize_t g) noexcept nogil:
    """The quads in group g's lists (the nonzero ones), starts as laid out by group"""
    return starts[g * PATTERNS + PATTERNS - 1] - starts[g * PATTERNS]


cdef inline Py_ssize_t group(const floating* X, bint by_rows, Py_ssize_t n, Py_ssize_t k,
                             Py_ssize_t ldx, Py_ssize_t g, int* starts, int* index,
                             floating* quads, const floating* offsets) noexcept nogil:
    """Group g of X's (n, k, rows ldx apart) rows (by_rows) or columns into the buffers,
    minus offsets (k: one per column of X) unless it is NULL; return its nonzeros"""
    if floating is float:
        return group_f(by_rows, X, n, k, ldx, g, starts, index, quads, offsets)
    else:
        return group_d(by_rows, X, n, k, ldx, g, starts, index, quads, offsets)


cdef Py_ssize_t group_share(const floating[:, ::1] X, Share share, Py_ssize_t parts,
                            Py_ssize_t cut, bint rows, int[::1] row_starts, int[::1] row_index,
                            floating[:, ::1] row_quads, bint columns, int[::1] column_starts,
                            int[::1] column_index, floating[:, ::1] column_quads,
                            const floating[::1] offsets, double* peak=NULL) noexcept nogil:
    """A share's groups, of each of its parts: (rows) the rank's share of the groups of four
    rows over the part's features, and (columns) of the groups of four of its features, of
    X - offsets where offsets (k,) is not empty; return their nonzeros. With rows and peak:
    *peak := the largest |x| (of x - offsets) of the share's rows and parts (as max_abs: inf
    for a NaN), read from their quads as each group is made."""
    cdef Py_ssize_t n = X.shape[0], k = X.shape[1]
    cdef Py_ssize_t n_rows = n_groups(n), part, f0, f1, g, g0, count, stride, base
    cdef Py_ssize_t nnz = 0
    cdef bint shifted = offsets.shape[0] > 0
    cdef int* starts
    cdef floating* quads
    if peak != NULL:
        peak[0] = 0
    for part in range(share.part0, share.part1):
        f0 = part_start(k, parts, part, cut)
        f1 = part_start(k, parts, part + 1, cut)
        if rows:
            # The part's lists: its starts after the other parts', its entries after theirs.
            stride = row_starts.shape[0] // (PATTERNS * parts)
            base = stride * f0
            starts = &row_starts[0] + PATTERNS * stride * part
            quads = &row_quads[0, 0] + GROUP * base
            for g in range(share.rank * n_rows // share.team,
                           (share.rank + 1) * n_rows // share.team):
                nnz += group(&X[0, f0], True, n, f1 - f0, k, g, starts, &row_index[0] + base,
                             quads, &offsets[f0] if shifted else NULL)
                if peak != NULL:
                    # The group's nonzero quads (past them lie zero quads).
                    peak[0] = max(peak[0], max_abs(quads + GROUP * starts[PATTERNS * g],
                                                   GROUP * quads_of(starts, g)))
        if columns:
            g0 = f0 // GROUP
            count = n_groups(f1) - g0
            for g in range(g0 + share.rank * count // share.team,
                           g0 + (share.rank + 1) * count // share.team):
                nnz += group(&X[0, 0], False, n, k, k, g, &column_starts[0],
                             &column_index[0], &column_quads[0, 0],
                             &offsets[0] if shifted else NULL)
    return nnz


cdef inline Py_ssize_t grouping_slots(Py_ssize_t n, Py_ssize_t k, int n_threads) noexcept nogil:
    return n_threads if n_threads > 1 and n * k >= PARALLEL_MIN_QUADS * GROUP else 1


cdef Py_ssize_t group_lines(const floating[:, ::1] X, bint by_rows, int[::1] starts_out,
                            int[::1] index_out, floating[:, ::1] quads_out, Py_ssize_t cut,
                            int n_threads, const floating[::1] offsets) noexcept nogil:
    """starts, index, quads := X's rows (by_rows: over each part of the features, the second
    from feature `cut`, see group_buffers) or columns in groups of 4, quads sorted by
    pattern, of X - offsets where offsets (k,) is not empty; return their nonzeros"""
    cdef Py_ssize_t n = X.shape[0], k = X.shape[1]
    cdef Py_ssize_t parts = feature_parts(k), slots = grouping_slots(n, k, n_threads)
    cdef Py_ssize_t slot, nnz = 0
    if n == 0 or k == 0:
        starts_out[:] = 0
        return 0
    # Each slot takes the groups of its parts, as the products that read them do; one slot
    # runs in the calling thread (here and below: no parallel region of one thread).
    if slots == 1:
        return group_share(X, share_of(0, 1, parts), parts, cut, by_rows, starts_out,
                           index_out, quads_out, not by_rows, starts_out, index_out, quads_out,
                           offsets)
    for slot in prange(slots, num_threads=slots, schedule="static"):
        nnz += group_share(X, share_of(slot, slots, parts), parts, cut, by_rows, starts_out,
                           index_out, quads_out, not by_rows, starts_out, index_out, quads_out,
                           offsets)
    return nnz


cdef void group_rows_and_columns(const floating[:, ::1] X, int[::1] row_starts_out,
                                 int[::1] row_index_out, floating[:, ::1] row_quads_out,
                                 int[::1] column_starts_out, int[::1] column_index_out,
                                 floating[:, ::1] column_quads_out, Py_ssize_t cut,
                                 int n_threads, const floating[::1] offsets,
                                 double* peak=NULL) noexcept nogil:
    """group_lines(X, True, row_*, offsets) and group_lines(X, False, column_*, offsets) in
    one parallel loop, X read by both while in cache: each slot groups the rows and the
    columns of its parts; unless peak is NULL, *peak := max |X - offsets| (group_share's,
    from the row groups)"""
    cdef Py_ssize_t n = X.shape[0], k = X.shape[1]
    cdef Py_ssize_t parts = feature_parts(k)
    cdef Py_ssize_t slots = min(grouping_slots(n, k, n_threads), <Py_ssize_t>PEAK_SLOTS), slot
    cdef double slot_peaks[PEAK_SLOTS]
    if peak != NULL:
        peak[0] = 0
    if n == 0 or k == 0:
        row_starts_out[:] = 0
        column_starts_out[:] = 0
        return
    if slots == 1:
        group_share(X, share_of(0, 1, parts), parts, cut, True, row_starts_out, row_index_out,
                    row_quads_out, True, column_starts_out, column_index_out,
                    column_quads_out, offsets, &slot_peaks[0] if peak != NULL else NULL)
    else:
        for slot in prange(slots, num_threads=slots, schedule="static"):
            group_share(X, share_of(slot, slots, parts), parts, cut, True, row_starts_out,
                        row_index_out, row_quads_out, True, column_starts_out,
                        column_index_out, column_quads_out, offsets,
                        &slot_peaks[slot] if peak != NULL else NULL)
    if peak != NULL:
        for slot in range(slots):
            peak[0] = max(peak[0], slot_peaks[slot])


cdef inline void product(Py_ssize_t n_groups_, const int* starts, const int* index,
                         const floating* quads, const floating* B, Py_ssize_t ldb,
                         const floating* bias, const floating* scales, floating alpha,
                         floating beta, bint relu, floating* out, Py_ssize_t ldo,
                         Py_ssize_t n_out, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    if floating is float:
        grouped_product_f(n_groups_, starts, index, quads, B, ldb, bias, scales, alpha, beta,
                          relu, out, ldo, n_out, j0, j1)
    else:
        grouped_product_d(n_groups_, starts, index, quads, B, ldb, bias, scales, alpha, beta,
                          relu, out, ldo, n_out, j0, j1)


cdef inline Py_ssize_t forward_width(Py_ssize_t rows, Py_ssize_t itemsize) noexcept nogil:
    """Columns of W per block of X @ W over a part of `rows` features: FORWARD_BYTES of each
    row, halved while the part's slab of W passes FORWARD_SLAB_BYTES, down to MIN_BLOCK_BYTES
    (whole tiles at every width: the products' bits do not depend on it)."""
    cdef Py_ssize_t width = FORWARD_BYTES
    while width > MIN_BLOCK_BYTES and rows * width > FORWARD_SLAB_BYTES:
        width //= 2
    return width // itemsize


cdef inline Py_ssize_t line_elements(Py_ssize_t itemsize) noexcept nogil:
    """Elements of a cache line"""
    return LINE_BYTES // itemsize


cdef inline Py_ssize_t packed_row_length(Py_ssize_t m, Py_ssize_t itemsize) noexcept nogil:
    """A row of pack_length's layout for W of m columns: each block of columns (starting at
    a multiple of MIN_BLOCK_BYTES) rounded up to whole lines, plus one line."""
    cdef Py_ssize_t line = line_elements(itemsize), unit = MIN_BLOCK_BYTES // itemsize
    return (m + line - 1) // line * line + line * ((m + unit - 1) // unit)


cdef Py_ssize_t pack_length(Py_ssize_t k, Py_ssize_t m, Py_ssize_t itemsize) noexcept nogil:
    """Elements of the buffer that X @ W (k, m) packs its slabs of W into (forward_share)"""
    return k * packed_row_length(m, itemsize)


cdef inline floating* packed_block(const floating[:, ::1] W, Py_ssize_t f0, Py_ssize_t f1,
                                   Py_ssize_t j1, Py_ssize_t j2, floating* pack,
                                   Py_ssize_t* ld_out) noexcept nogil:
    """W[f0:f1, j1:j2] copied into pack, its rows ld_out elements apart: j2 - j1 rounded up
    to whole lines, plus one, so that they are an odd number of lines apart wherever the
    block is a power of two of lines wide (forward_width's are). Blocks start at multiples of
    MIN_BLOCK_BYTES (a share's columns, then forward_width's steps), so that each (rows, j1)
    has its own place in pack (pack_length): the threads' blocks never overlap, whatever
    their number. pack and W's rows on 64-byte boundaries keep the copy's rows on them."""
    cdef Py_ssize_t m = W.shape[1], line = line_elements(sizeof(floating))
    cdef Py_ssize_t unit = MIN_BLOCK_BYTES // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t ld = (j2 - j1 + line - 1) // line * line + line, r
    cdef floating* slab = pack + f0 * packed_row_length(m, sizeof(floating)) + (f1 - f0) * (
        j1 + line * (j1 // unit))
    for r in range(f1 - f0):
        memcpy(slab + r * ld, &W[f0 + r, j1], (j2 - j1) * sizeof(floating))
    ld_out[0] = ld
    return slab


cdef inline floating* packed_block_of_transpose(const floating[:, ::1] S, Py_ssize_t f0,
                                                Py_ssize_t f1, Py_ssize_t j1, Py_ssize_t j2,
                                                floating* pack,
                                                Py_ssize_t* ld_out) noexcept nogil:
    """packed_block of W = S.T (S (m, k)): S[j1:j2, f0:f1] transposed into the place of W's
    block in pack, its rows as packed_block's"""
    cdef Py_ssize_t m = S.shape[0], line = line_elements(sizeof(floating))
    cdef Py_ssize_t unit = MIN_BLOCK_BYTES // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t ld = (j2 - j1 + line - 1) // line * line + line
    cdef floating* slab = pack + f0 * packed_row_length(m, sizeof(floating)) + (f1 - f0) * (
        j1 + line * (j1 // unit))
    # The tiles in AVX registers on the AVX2 and AVX-512 builds of the products.
    transpose_block(&S[j1, f0], S.shape[1], slab, ld, j2 - j1, f1 - f0, _isa > 0)
    ld_out[0] = ld
    return slab


cdef void forward_share(const int[::1] starts, const int[::1] index,
                        const floating[:, ::1] quads, const floating[:, ::1] W,
                        const floating[::1] b, const floating[::1] offsets,
                        floating[:, ::1] offset_sums, bint relu, floating[:, ::1] Z_out,
                        floating[:, ::1] partial, Share share, Py_ssize_t parts,
                        Py_ssize_t cut, floating* pack, bint transposed=False) noexcept nogil:
    """A share's products: of each of its parts, the rank's share of W's columns, in blocks
    of forward_width; part 0 into Z_out with the bias, part 1 into partial, or, where the
    share holds every part, added to Z_out by the product (z = sums + Z_out, the bits of
    sparse_forward's addition), relu applied after the last part. With offsets (k,), each
    part's bias is offset_sums[part] := (b if part 0) + offsets[part's rows] @ W[part's rows],
    the share's columns of it computed first. pack (pack_length(k, m) elements, or NULL):
    where the part's rows of W span PACK_MIN_BYTES and its lists hold PACK_MIN_QUADS (this
    instruction set's) nonzero quads per feature, each block's slab of W is copied there
    first (packed_block) and read from the copy; the same bits. transposed: the array W
    holds the product's weights transposed, (m, k); every block is then packed from it
    (packed_block_of_transpose; pack not NULL, offsets empty)."""
    cdef Py_ssize_t n = Z_out.shape[0], m = Z_out.shape[1]
    cdef Py_ssize_t k = W.shape[1] if transposed else W.shape[0]
    cdef Py_ssize_t unit = MIN_BLOCK_BYTES // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t units = (m + unit - 1) // unit
    cdef Py_ssize_t stride = starts.shape[0] // (PATTERNS * parts)
    cdef Py_ssize_t part, f0, f1, base, j0, j1, j2, last, width
    cdef bint whole = share.part0 == 0 and share.part1 == parts
    cdef bint shifted = offsets.shape[0] > 0
    cdef floating* out
    cdef floating* slab
    cdef const floating* bias
    cdef Py_ssize_t ld_slab
    cdef bint packed
    # The rank's columns: whole tiles, so every output element is one tile's sum, whoever
    # computes it.
    j0 = min(share.rank * units // share.team * unit, m)
    last = min((share.rank + 1) * units // share.team * unit, m)
    for part in range(share.part0, share.part1):
        f0, f1 = part_start(k, parts, part, cut), part_start(k, parts, part + 1, cut)
        width = forward_width(f1 - f0, sizeof(floating))
        base = stride * f0
        out = &Z_out[0, 0] if part == 0 or whole else &partial[0, 0]
        bias = &b[0] if part == 0 else NULL
        if shifted and j0 < last:
            if floating is float:
                offset_sums_f(&offsets[f0], &W[f0, 0], m, f1 - f0, bias,
                              &offset_sums[part, 0], j0, last)
            else:
                offset_sums_d(&offsets[f0], &W[f0, 0], m, f1 - f0, bias,
                              &offset_sums[part, 0], j0, last)
            bias = &offset_sums[part, 0]
        # The part's last list ends after its nonzero quads (quads_of).
        packed = transposed or (
            pack != NULL
            and (f1 - f0) * m * <Py_ssize_t>sizeof(floating) >= PACK_MIN_BYTES
            and starts[PATTERNS * (stride * part + n_groups(n)) - 1]
            >= _pack_min_quads * (f1 - f0))
        j1 = j0
        while j1 < last:
            j2 = min(j1 + width, last)
            if not packed:
                product(n_groups(n), &starts[0] + PATTERNS * stride * part, &index[0] + base,
                        &quads[0, 0] + GROUP * base, &W[f0, 0], m, bias, NULL, 1,
                        1 if part and whole else 0, relu and whole and part == parts - 1, out,
                        m, n, j1, j2)
            else:
                if transposed:
                    slab = packed_block_of_transpose(W, f0, f1, j1, j2, pack, &ld_slab)
                else:
                    slab = packed_block(W, f0, f1, j1, j2, pack, &ld_slab)
                product(n_groups(n), &starts[0] + PATTERNS * stride * part, &index[0] + base,
                        &quads[0, 0] + GROUP * base, slab, ld_slab,
                        bias + j1 if bias != NULL else NULL, NULL, 1,
                        1 if part and whole else 0, relu and whole and part == parts - 1,
                        out + j1, m, n, 0, j2 - j1)
            j1 = j2


cdef void sparse_forward(const int[::1] starts, const int[::1] index,
                         const floating[:, ::1] quads, const floating[:, ::1] W,
                         const floating[::1] b, const floating[::1] offsets,
                         floating[:, ::1] offset_sums, bint relu, floating[:, ::1] Z_out,
                         floating[:, ::1] partial, Py_ssize_t cut, int n_threads,
                         floating[::1] pack, bint transposed=False) noexcept nogil:
    """Z := act(X @ W + b), X given by group_lines(X, True, ...), act = relu if relu else
    identity. X @ W is summed over each part of the features (feature_parts; the second from
    feature `cut`, as the groups were made), part 0's sums
    with the bias into Z, part 1's into partial (n rows of Z's width, or more), then added
    (Z + partial: the same bits whoever computed the parts); on one thread, part 1's
    product adds its sums to Z itself, to the same bits. With offsets (k,; empty: none), the
    groups hold X's distances from them (group_lines with the same offsets) and Z := act(X @ W
    + b) = act((X - offsets) @ W + b + offsets @ W), each part's share of offsets @ W in
    offset_sums (parts, m). pack: pack_length(k, m) elements where the products read W's
    slabs from a copy (forward_share), or none. transposed: the array W is the weights'
    transpose, (m, k), packed from there (forward_share's; pack given, offsets empty)."""
    cdef Py_ssize_t n = Z_out.shape[0], m = Z_out.shape[1]
    cdef Py_ssize_t parts = feature_parts(W.shape[1] if transposed else W.shape[0])
    cdef floating* packed = &pack[0] if pack.shape[0] else NULL
    cdef Py_ssize_t stride = starts.shape[0] // (PATTERNS * parts)
    cdef Py_ssize_t slots = 1, slot, part, i0, i1, products = 0
    if n == 0 or m == 0:
        return
    # The quads before each part's last list's end bound the multiply-adds per column.
    for part in range(parts):
        products += starts[PATTERNS * (stride * part + n_groups(n)) - 1]
    if n_threads > 1 and products * m >= PARALLEL_MIN_PRODUCTS:
        slots = n_threads
    if slots == 1:
        forward_share(starts, index, quads, W, b, offsets, offset_sums, relu, Z_out, partial,
                      share_of(0, 1, parts), parts, cut, packed, transposed)
    else:
        for slot in prange(slots, num_threads=slots, schedule="static"):
            forward_share(starts, index, quads, W, b, offsets, offset_sums, relu, Z_out,
                          partial, share_of(slot, slots, parts), parts, cut, packed, transposed)
    if parts > 1 and slots > 1:
        add_partial_sums(Z_out, partial, relu, slots)


cdef void add_partial_sums(floating[:, ::1] Z_out, const floating[:, ::1] partial, bint relu,
                           Py_ssize_t slots) noexcept nogil:
    """Z := act(Z + partial) by rows on `slots` (> 1) threads: each thread's rows of Z as the
    layer above's blocks of rows"""
    cdef Py_ssize_t n = Z_out.shape[0], slot
    for slot in prange(slots, num_threads=slots, schedule="static"):
        add_parts_rows(Z_out, partial, relu, slot * n // slots, (slot + 1) * n // slots)


cdef void add_parts_rows(floating[:, ::1] Z_out, const floating[:, ::1] partial, bint relu,
                         Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """Z := act(Z + partial) in rows i0 ... i1 - 1 (element by element: the same bits in any
    rows)"""
    cdef Py_ssize_t m = Z_out.shape[1]
    if i1 > i0:
        if floating is float:
            add_parts_f(&Z_out[i0, 0], &partial[i0, 0], (i1 - i0) * m, relu)
        else:
            add_parts_d(&Z_out[i0, 0], &partial[i0, 0], (i1 - i0) * m, relu)


cdef inline void group_and_forward_share(
        const floating[:, ::1] X, int[::1] row_starts_out, int[::1] row_index_out,
        floating[:, ::1] row_quads_out, bint columns, int[::1] column_starts_out,
        int[::1] column_index_out, floating[:, ::1] column_quads_out, const floating[:, ::1] W,
        const floating[::1] b, const floating[::1] offsets, floating[:, ::1] offset_sums,
        bint relu, floating[:, ::1] Z_out, floating[:, ::1] partial, Py_ssize_t cut,
        Share share, Py_ssize_t parts, double* peak, floating* pack) noexcept nogil:
    """group_and_forward's work for one slot: the groups of its share's parts, then their
    products"""
    group_share(X, share, parts, cut, True, row_starts_out, row_index_out, row_quads_out,
                columns, column_starts_out, column_index_out, column_quads_out, offsets, peak)
    forward_share(row_starts_out, row_index_out, row_quads_out, W, b, offsets, offset_sums,
                  relu, Z_out, partial, share, parts, cut, pack)


cdef bint group_and_forward(const floating[:, ::1] X, int[::1] row_starts_out,
                            int[::1] row_index_out, floating[:, ::1] row_quads_out,
                            bint columns, int[::1] column_starts_out, int[::1] column_index_out,
                            floating[:, ::1] column_quads_out, const floating[:, ::1] W,
                            const floating[::1] b, const floating[::1] offsets,
                            floating[:, ::1] offset_sums, bint relu, floating[:, ::1] Z_out,
                            floating[:, ::1] partial, Py_ssize_t cut, int n_threads,
                            double* peak, bint add_parts, floating[::1] pack) noexcept nogil:
    """group_lines(X, True, row_*, offsets) (and, if columns, group_lines(X, False, column_*,
    offsets)), then sparse_forward on the row groups (with offsets, see there: here X holds
    the inputs, the groups their distances from the offsets). Where each thread holds whole
    parts, it groups and multiplies them in one parallel region: its products read only the
    groups it made. Unless peak is NULL, *peak := max |X - offsets| (as max_abs: inf for a
    NaN), from the quads of the row groups as they are made. With offsets, the rows of Z
    whose rows of X are all zeros are act(b) exactly (exact_zero_rows). Return True where the
    threads left partial sums for Z := act(Z + partial) (add_parts_rows) and add_parts was
    False: the caller's next pass over Z's rows adds them (fastnaive._program's head pass);
    else Z is whole. pack: as sparse_forward's."""
    cdef Py_ssize_t n = X.shape[0], k = X.shape[1], m = Z_out.shape[1]
    cdef Py_ssize_t parts = feature_parts(k), slots = grouping_slots(n, k, n_threads)
    cdef Py_ssize_t slot, nonzeros
    cdef bint pending
    cdef floating* packed = &pack[0] if pack.shape[0] else NULL
    cdef double slot_peaks[MAX_PARTS]
    if n == 0 or k == 0 or m == 0 or slots > parts:
        if columns:
            group_rows_and_columns(X, row_starts_out, row_index_out, row_quads_out,
                                   column_starts_out, column_index_out, column_quads_out,
                                   cut, n_threads, offsets, peak)
        else:
            group_lines(X, True, row_starts_out, row_index_out, row_quads_out, cut, n_threads,
                        offsets)
            if peak != NULL and offsets.shape[0]:
                peak[0] = scan_from(X, offsets, &nonzeros, n_threads)
            elif peak != NULL:
                peak[0] = max_abs(&X[0, 0], n * k) if n and k else 0
        sparse_forward(row_starts_out, row_index_out, row_quads_out, W, b, offsets,
                       offset_sums, relu, Z_out, partial, cut, n_threads, pack)
        if offsets.shape[0]:
            exact_zero_rows(X, b, relu, Z_out, partial, False)
        return False
    if slots == 1:
        group_and_forward_share(X, row_starts_out, row_index_out, row_quads_out, columns,
                                column_starts_out, column_index_out, column_quads_out, W, b,
                                offsets, offset_sums, relu, Z_out, partial, cut,
                                share_of(0, 1, parts), parts,
                                &slot_peaks[0] if peak != NULL else NULL, packed)
    else:
        for slot in prange(slots, num_threads=slots, schedule="static"):
            group_and_forward_share(X, row_starts_out, row_index_out, row_quads_out, columns,
                                    column_starts_out, column_index_out, column_quads_out, W,
                                    b, offsets, offset_sums, relu, Z_out, partial, cut,
                                    share_of(slot, slots, parts), parts,
                                    &slot_peaks[slot] if peak != NULL else NULL, packed)
    if peak != NULL:
        peak[0] = 0
        for slot in range(slots):
            peak[0] = max(peak[0], slot_peaks[slot])
    pending = parts > 1 and slots > 1 and not add_parts
    if parts > 1 and slots > 1 and add_parts:
        add_partial_sums(Z_out, partial, relu, slots)
    if offsets.shape[0]:
        exact_zero_rows(X, b, relu, Z_out, partial, pending)
    return pending


cdef inline bint zero_row(const floating* x, Py_ssize_t k) noexcept nogil:
    """Whether x[0 ... k - 1] are all zero (NaN is not): in blocks of ZERO_BLOCK, whose
    count of nonzeros the compiler vectorises, stopping after the first block with one"""
    cdef Py_ssize_t f = 0, t
    cdef int nonzeros
    while f + ZERO_BLOCK <= k:
        nonzeros = 0
        for t in range(ZERO_BLOCK):
            nonzeros += x[f + t] != 0
        if nonzeros:
            return False
        f += ZERO_BLOCK
    for t in range(f, k):
        if x[t] != 0:
            return False
    return True


cdef void exact_zero_rows(const floating[:, ::1] X, const floating[::1] b, bint relu,
                          floating[:, ::1] Z_out, floating[:, ::1] partial,
                          bint pending) noexcept nogil:
    """Each row of Z of a row of X that is all zeros := act(b) (relu(b) if relu, else b),
    the bits X @ W + b has there; where pending (the partial sums are left for
    act(Z + partial)), Z's row := b and partial's := 0, which that addition leaves as act(b)"""
    cdef Py_ssize_t n = X.shape[0], k = X.shape[1], m = Z_out.shape[1], i, j
    cdef floating z
    for i in range(n):
        if not zero_row(&X[i, 0], k):
            continue
        for j in range(m):
            z = b[j]
            Z_out[i, j] = 0 if relu and not pending and z < 0 else z
            if pending:
                partial[i, j] = 0


cdef Py_ssize_t balanced_cut(const int[::1] starts, Py_ssize_t g0, Py_ssize_t g1,
                             Py_ssize_t total, Py_ssize_t num, Py_ssize_t den) noexcept nogil:
    """The first group g of [g0, g1) before which num / den of the groups' `total` quads lie
    (g1 for num = den)"""
    cdef Py_ssize_t g, done = 0
    if num >= den:
        return g1
    for g in range(g0, g1):
        if done * den >= num * total:
            return g
        done += quads_of(&starts[0], g)
    return g1


cdef void param_grad_share(const int[::1] starts, const int[::1] index,
                           const floating[:, ::1] quads, const floating[:, ::1] delta,
                           floating alpha, floating beta, floating[:, ::1] dW_out,
                           const floating[::1] offsets, const floating[::1] delta_sums,
                           Share share, Py_ssize_t parts, Py_ssize_t cut,
                           const Rule* rule) noexcept nogil:
    """A share's rows of dW (and their rule steps): of each of its parts, the rank's share of
    the part's column groups (an equal share of their quads), in slabs of columns whose part
    of delta fits SLAB_BYTES; with offsets, row r gains offsets[r] * delta_sums (alpha *
    sum_rows(delta)) in the product, before the rule's step"""
    cdef Py_ssize_t k = dW_out.shape[0], m = dW_out.shape[1]
    cdef Py_ssize_t block = BLOCK_BYTES // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t part, c0, c1, g, g0, g1, r, r0, r1, j0, j1, width, total
    cdef bint shifted = offsets.shape[0] > 0
    width = SLAB_BYTES // (max(delta.shape[0], 1) * <Py_ssize_t>sizeof(floating))
    width = max(block, width // block * block)
    for part in range(share.part0, share.part1):
        c0 = part_start(k, parts, part, cut) // GROUP
        c1 = n_groups(part_start(k, parts, part + 1, cut))
        total = 0
        for g in range(c0, c1):
            total += quads_of(&starts[0], g)
        g0 = balanced_cut(starts, c0, c1, total, share.rank, share.team)
        g1 = balanced_cut(starts, c0, c1, total, share.rank + 1, share.team)
        r0 = GROUP * g0
        r1 = min(GROUP * g1, k)
        if r1 <= r0:
            continue
        j0 = 0
        while j0 < m:
            j1 = min(j0 + width, m)
            # With offsets, the rows' terms offsets[r] * delta_sums as the product's bias.
            product(g1 - g0, &starts[g0 * PATTERNS], first_index(index), first_quad(quads),
                    &delta[0, 0], delta.shape[1], &delta_sums[0] if shifted else NULL,
                    &offsets[r0] if shifted else NULL, alpha, beta, False, &dW_out[r0, 0], m,
                    k - r0, j0, j1)
            if rule != NULL:
                if j0 == 0 and j1 == m:
                    rule_step(rule, 0, &dW_out[r0, 0], r0 * m, (r1 - r0) * m)
                else:
                    for r in range(r0, r1):
                        rule_step(rule, 0, &dW_out[r, j0], r * m + j0, j1 - j0)
            j0 = j1


cdef void sparse_param_grad(const int[::1] starts, const int[::1] index,
                            const floating[:, ::1] quads, const floating[:, ::1] delta,
                            floating alpha, floating beta, floating[:, ::1] dW_out,
                            floating[::1] db_out, const floating[::1] offsets,
                            floating[::1] delta_sums, Py_ssize_t cut, int n_threads,
                            const Rule* rule, floating[:, ::1] padded) noexcept nogil:
    """dW := alpha * X.T @ delta + beta * dW;  db := alpha * sum_rows(delta) + beta * db, X
    given by group_lines(X, False, ...); then, unless rule is NULL, its step on each part of
    dW and db. With offsets (k,; empty: none), the groups hold X's distances from them
    (group_lines with the same offsets) and dW gains alpha * outer(offsets, sum_rows(delta)),
    alpha * sum_rows(delta) computed into delta_sums (m,) first. Where padded has at least
    delta's rows and wider ones (delta_stride), the products read a copy of delta made
    there: the same sums, faster.

    Each slot takes the rows of dW of its parts of the features (feature_parts), those whose
    rows of W its forward products read and whose column groups it made, and a share of db's
    columns. Each element is computed by one kernel call over its group, so the bits do not
    depend on the number of threads; a thread's part of W and of the optimizer's state is
    one stretch of memory (per row of a slab), which no other thread's part shares a cache
    line with."""
    cdef Py_ssize_t k = dW_out.shape[0], m = dW_out.shape[1], n = delta.shape[0]
    cdef Py_ssize_t parts = feature_parts(k), n_groups_ = starts.shape[0] // PATTERNS
    cdef Py_ssize_t slots = 1, slot, j0, j1
    cdef bint copied = n > 0 and padded.shape[0] >= n and padded.shape[1] > m
    cdef bint shifted = offsets.shape[0] > 0
    cdef const floating[:, ::1] read = delta
    if m == 0:
        return
    if (n_threads > 1 and n_groups_ > 0
            and starts[n_groups_ * PATTERNS - 1] * m >= PARALLEL_MIN_PRODUCTS):
        slots = n_threads
    if copied:
        read = padded[:n]
    if slots == 1:
        if shifted:
            bias_grad(delta, alpha, 0, delta_sums, 0, m)
        if copied:
            copy_rows(delta, padded, 0, n)
        param_grad_slot(starts, index, quads, read, alpha, beta, dW_out, db_out, offsets,
                        delta_sums, cut, rule, 0, 1, parts)
        return
    # The copy and the offsets' column sums before any product reads them: each slot copies
    # a share of the rows and sums a share of the columns.
    if shifted or copied:
        for slot in prange(slots, num_threads=slots, schedule="static"):
            if shifted:
                j0 = slot * m // slots
                j1 = (slot + 1) * m // slots
                if j1 > j0:
                    bias_grad(delta, alpha, 0, delta_sums, j0, j1)
            if copied:
                copy_rows(delta, padded, slot * n // slots, (slot + 1) * n // slots)
    for slot in prange(slots, num_threads=slots, schedule="static"):
        param_grad_slot(starts, index, quads, read, alpha, beta, dW_out, db_out, offsets,
                        delta_sums, cut, rule, slot, slots, parts)


cdef inline void copy_rows(const floating[:, ::1] source, floating[:, ::1] target,
                           Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """target[i, :m] := source[i, :] for i in [i0, i1), m = source's row length"""
    cdef Py_ssize_t i
    for i in range(i0, i1):
        memcpy(&target[i, 0], &source[i, 0], source.shape[1] * sizeof(floating))


cdef inline void param_grad_slot(const int[::1] starts, const int[::1] index,
                                 const floating[:, ::1] quads, const floating[:, ::1] delta,
                                 floating alpha, floating beta, floating[:, ::1] dW_out,
                                 floating[::1] db_out, const floating[::1] offsets,
                                 floating[::1] delta_sums, Py_ssize_t cut, const Rule* rule,
                                 Py_ssize_t slot, Py_ssize_t slots,
                                 Py_ssize_t parts) noexcept nogil:
    """sparse_param_grad's work for one of `slots`: dW's rows of its parts, and its share of
    db's columns"""
    cdef Py_ssize_t m = dW_out.shape[1]
    cdef Py_ssize_t j0 = slot * m // slots, j1 = (slot + 1) * m // slots
    param_grad_share(starts, index, quads, delta, alpha, beta, dW_out, offsets, delta_sums,
                     share_of(slot, slots, parts), parts, cut, rule)
    if j1 > j0:
        bias_grad(delta, alpha, beta, db_out, j0, j1)
        if rule != NULL:
            rule_step(rule, 1, &db_out[j0], j0, j1 - j0)


cdef bint narrow_in_parallel(Py_ssize_t n, Py_ssize_t m, Py_ssize_t k, Py_ssize_t n_blocks,
                             int n_threads) noexcept nogil:
    """True when a narrow product of n x k x m multiply-adds in n_blocks blocks is worth a
    parallel region"""
    return n_threads > 1 and n_blocks > 1 and n * m * k >= NARROW_PARALLEL_MIN


cdef void narrow_forward_rows(const floating[:, ::1] X, const floating[:, ::1] W,
                              const floating[::1] b, int activation, floating[:, ::1] Z_out,
                              Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """narrow_forward's rows i0 ... i1 - 1 (each row's sums are the same in any block)"""
    cdef Py_ssize_t m = Z_out.shape[1], k = X.shape[1]
    # With k = 0, X and W have no first element: the kernel reads neither.
    if floating is float:
        narrow_forward_f(&X[0, 0] if k else NULL, k, k, &W[0, 0] if k else NULL, m, &b[0],
                         &Z_out[0, 0], i0, i1)
    else:
        narrow_forward_d(&X[0, 0] if k else NULL, k, k, &W[0, 0] if k else NULL, m, &b[0],
                         &Z_out[0, 0], i0, i1)
    activate(activation, &Z_out[i0, 0], &Z_out[i0, 0], (i1 - i0) * m)


cdef void narrow_forward(const floating[:, ::1] X, const floating[:, ::1] W,
                         const floating[::1] b, int activation, floating[:, ::1] Z_out,
                         int n_threads) noexcept nogil:
    """Z := act(X @ W + b), act of code `activation`, for W of at most NARROW_MAX columns"""
    cdef Py_ssize_t n = Z_out.shape[0], m = Z_out.shape[1], k = X.shape[1]
    cdef Py_ssize_t n_blocks = (n + NARROW_ROWS - 1) // NARROW_ROWS
    cdef Py_ssize_t block
    if n == 0 or m == 0:
        return
    if narrow_in_parallel(n, m, k, n_blocks, n_threads):
        for block in prange(n_blocks, num_threads=n_threads, schedule="static"):
            narrow_forward_rows(X, W, b, activation, Z_out, block * NARROW_ROWS,
                                min(block * NARROW_ROWS + NARROW_ROWS, n))
    else:
        narrow_forward_rows(X, W, b, activation, Z_out, 0, n)


cdef void narrow_input_rows(const floating[:, ::1] delta, const floating[:, ::1] W,
                            floating[:, ::1] dX_out, const floating* relu_of, Py_ssize_t i0,
                            Py_ssize_t i1, double* slot_peaks) noexcept nogil:
    """narrow_input_grad's rows i0 ... i1 - 1; unless slot_peaks is NULL, their peaks there"""
    cdef Py_ssize_t k = dX_out.shape[1], m = W.shape[1]
    if slot_peaks != NULL:
        slot_peaks[0] = slot_peaks[1] = 0
    if i1 <= i0:
        return
    if floating is float:
        narrow_input_f(&delta[i0, 0], i1 - i0, m, &W[0, 0], &dX_out[i0, 0], k, 0, k,
                       relu_of + i0 * k if relu_of != NULL else NULL)
    else:
        narrow_input_d(&delta[i0, 0], i1 - i0, m, &W[0, 0], &dX_out[i0, 0], k, 0, k,
                       relu_of + i0 * k if relu_of != NULL else NULL)
    if slot_peaks != NULL:
        if relu_of != NULL:
            slot_peaks[0] = max_abs(relu_of + i0 * k, (i1 - i0) * k)
        slot_peaks[1] = max_abs(&dX_out[i0, 0], (i1 - i0) * k)


cdef void narrow_input_grad(const floating[:, ::1] delta, const floating[:, ::1] W,
                            floating[:, ::1] dX_out, int n_threads, const floating* relu_of,
                            double* peaks) noexcept nogil:
    """dX := delta @ W.T, for W of at most NARROW_MAX columns; unless relu_of is NULL, times
    ReLU's derivative where relu_of, ReLU's outputs (n rows as dX's), was computed:
    dX := where(relu_of > 0, dX, 0), as each block is stored. Each thread takes a slice of
    the rows, those of relu_of that the layer's forward blocks wrote on it (narrow_forward's,
    add_partial_sums'). Unless peaks is NULL: peaks[0] := max |relu_of| (0 when it is NULL),
    peaks[1] := max |dX| (max_abs's: inf for a NaN), each slice's scanned right after it is
    stored."""
    cdef Py_ssize_t n = dX_out.shape[0], k = dX_out.shape[1], m = W.shape[1]
    cdef Py_ssize_t slots = min(min(n_threads, <Py_ssize_t>PEAK_SLOTS), n), slot
    cdef double slot_peaks[2 * PEAK_SLOTS]
    if peaks != NULL:
        peaks[0] = peaks[1] = 0
    if n == 0 or k == 0:
        return
    if not narrow_in_parallel(n, m, k, slots, n_threads):
        slots = 1
    if slots > 1:
        for slot in prange(slots, num_threads=slots, schedule="static"):
            narrow_input_rows(delta, W, dX_out, relu_of, slot * n // slots,
                              (slot + 1) * n // slots,
                              &slot_peaks[2 * slot] if peaks != NULL else NULL)
    else:
        narrow_input_rows(delta, W, dX_out, relu_of, 0, n,
                          slot_peaks if peaks != NULL else NULL)
    if peaks != NULL:
        for slot in range(slots):
            peaks[0] = max(peaks[0], slot_peaks[2 * slot])
            peaks[1] = max(peaks[1], slot_peaks[2 * slot + 1])


cdef inline void narrow_param_block(const floating[:, ::1] X, const floating[:, ::1] delta,
                                    floating alpha, floating beta, floating[:, ::1] dW_out,
                                    floating[::1] db_out, const Rule* rule, Py_ssize_t c0,
                                    Py_ssize_t c1) noexcept nogil:
    """narrow_param_grad's rows c0 ... c1 - 1 of dW (and, for the first, db)"""
    cdef Py_ssize_t n = X.shape[0], k = dW_out.shape[0], m = dW_out.shape[1]
    if floating is float:
        narrow_param_f(&X[0, 0] if n else NULL, k, &delta[0, 0] if n else NULL, n, m, alpha,
                       beta, &dW_out[0, 0], c0, c1)
    else:
        narrow_param_d(&X[0, 0] if n else NULL, k, &delta[0, 0] if n else NULL, n, m, alpha,
                       beta, &dW_out[0, 0], c0, c1)
    if rule != NULL:
        rule_step(rule, 0, &dW_out[c0, 0], c0 * m, (c1 - c0) * m)
    if c0 == 0:  # the first block owns the bias
        bias_grad(delta, alpha, beta, db_out, 0, m)
        if rule != NULL:
            rule_step(rule, 1, &db_out[0], 0, m)


cdef void narrow_param_grad(const floating[:, ::1] X, const floating[:, ::1] delta,
                            floating alpha, floating beta, floating[:, ::1] dW_out,
                            floating[::1] db_out, int n_threads,
                            const Rule* rule) noexcept nogil:
    """dW := alpha * X.T @ delta + beta * dW;  db := alpha * sum_rows(delta) + beta * db, for
    delta of at most NARROW_MAX columns; then, unless rule is NULL, its step on each block
    of rows and on db"""
    cdef Py_ssize_t n = X.shape[0], k = dW_out.shape[0], m = dW_out.shape[1]
    # Blocks of 256 bytes of dW's rows, a whole number of tiles on every ISA (each element
    # is its tile's sum at any block width): a 128-input head's in two.
    cdef Py_ssize_t width = MIN_BLOCK_BYTES // <Py_ssize_t>sizeof(floating)
    cdef Py_ssize_t block, n_blocks = (k + width - 1) // width
    if m == 0:
        return
    if k == 0:
        bias_grad(delta, alpha, beta, db_out, 0, m)
        if rule != NULL:
            rule_step(rule, 1, &db_out[0], 0, m)
        return
    if narrow_in_parallel(n, m, k, n_blocks, n_threads):
        for block in prange(n_blocks, num_threads=n_threads, schedule="static"):
            narrow_param_block(X, delta, alpha, beta, dW_out, db_out, rule, block * width,
                               min(block * width + width, k))
    else:
        for block in range(n_blocks):
            narrow_param_block(X, delta, alpha, beta, dW_out, db_out, rule, block * width,
                               min(block * width + width, k))


cdef bint lists_in_range(const int[::1] starts, Py_ssize_t capacity, const int[::1] index,
                         Py_ssize_t n_index) noexcept nogil:
    """True when starts is non-decreasing in [0, capacity] and the lists' index lies in [0, n_index)"""
    cdef Py_ssize_t i, g, p
    cdef int lowest = 0, highest = 0
    if starts.shape[0] == 0:
        return True
    if starts[0] < 0 or starts[starts.shape[0] - 1] > capacity:
        return False
    for i in range(starts.shape[0] - 1):
        if starts[i + 1] < starts[i]:
            return False
    for g in range(starts.shape[0] // PATTERNS):
        for p in range(starts[PATTERNS * g], starts[PATTERNS * g + PATTERNS - 1]):
            lowest = min(lowest, index[p])
            highest = max(highest, index[p])
    return lowest >= 0 and highest < n_index


# ---- Python wrappers: check shapes and indices, then run the kernel without the GIL. ----

def _shape_error(str expected, **arrays):
    received = ", ".join(f"{name}.shape={tuple(a.shape)}" for name, a in arrays.items())
    return ValueError(f"Expected {expected}. Received: {received}")


def _check_lists(const int[::1] starts, const int[::1] index, Py_ssize_t capacity,
                 Py_ssize_t n_index):
    cdef bint valid
    with nogil:
        valid = lists_in_range(starts, capacity, index, n_index)
    if valid:
        return
    starts_, index_ = np.asarray(starts), np.asarray(index)
    received = (f"starts in [{starts_.min()}, {starts_.max()}], non-decreasing="
                f"{bool(np.all(np.diff(starts_) >= 0))}")
    for g in range(0, len(starts_), PATTERNS):
        first, end = (min(max(int(p), 0), capacity) for p in starts_[[g, g + PATTERNS - 1]])
        bad = np.flatnonzero((index_[first:end] < 0) | (index_[first:end] >= n_index))
        if bad.size:
            received += f", index[{first + bad[0]}]={index_[first + bad[0]]}"
            break
    raise ValueError(f"Expected starts non-decreasing in [0, {capacity}] (the length of index "
                     f"and quads) and index in [0, {n_index}) in every list. Received: "
                     f"{received}")


def _n_threads(n_threads):
    return max_threads() if n_threads is None else max(1, int(n_threads))


def select_instruction_set(str widest="avx512"):
    """Use the widest kernels, of "baseline", "avx2" and "avx512", that the CPU runs and that are no wider than `widest`; return their name."""
    if widest not in INSTRUCTION_SETS:
        raise ValueError(f"Expected widest in {INSTRUCTION_SETS}. Received: widest={widest!r}")
    global _isa, _pack_min_quads
    _isa = select_isa(INSTRUCTION_SETS.index(widest))
    _pack_min_quads = PACK_MIN_QUADS[_isa]
    return INSTRUCTION_SETS[_isa]


def instruction_set():
    """The instruction set the kernels run on: "baseline", "avx2" or "avx512"."""
    return INSTRUCTION_SETS[_isa]


def delta_stride(Py_ssize_t m, dtype):
    """The row length (in elements, at least m) of a copy of the weight gradient's delta
    (n, m) that the selected kernels read faster than delta itself (sparse_param_grad's
    padded; m: no copy): rows an odd number of 64-byte lines apart, where delta's are not on
    64-byte boundaries or are a multiple of PAD_LINES lines apart. The grouped product's
    passes read the same line of many rows; rows an even number of lines apart share few of
    L1's 64 sets (2 KB apart, two of them; 4 KB, one). A weight gradient of 128 rows of
    MNIST or Fashion-MNIST on one Zen 4 core, the copy included: on AVX2 (passes of one or
    two lines a row), 512 floats 6-9% faster, 1024 and 2048 14-15%, 512 doubles 11-14%, 256
    floats 5%, 490 floats (rows off the boundaries) 6%; on AVX-512 (one pass of four lines a
    row), 512 floats level, 1024 and 2048 floats and 512 doubles (4 and 8 KB apart) 2-4%,
    490 floats 4-11%. Where the copy costs what it saves is not measured: the baseline's
    kernels never copy."""
    cdef Py_ssize_t itemsize = np.dtype(dtype).itemsize, lines, every = PAD_LINES[_isa]
    if m < 1:
        raise ValueError(f"Expected m >= 1. Received: m={m}")
    lines = (m * itemsize + LINE_BYTES - 1) // LINE_BYTES
    if every == 0 or (m * itemsize % LINE_BYTES == 0 and lines % every):
        return m
    lines += 1 - lines % 2
    return lines * LINE_BYTES // itemsize


def pack_buffer(Py_ssize_t k, Py_ssize_t m, dtype):
    """An empty buffer, on a 64-byte boundary, for the copies of W's slabs (k, m) that X @ W
    reads (sparse_forward_checked's pack; see forward_share)"""
    if k < 0 or m < 0:
        raise ValueError(f"Expected k >= 0 and m >= 0. Received: k={k}, m={m}")
    return aligned_empty(pack_length(k, m, np.dtype(dtype).itemsize), dtype)


def group_buffers(Py_ssize_t n_lines, Py_ssize_t n_positions, dtype, *, bint by_rows):
    """Return empty (starts, index, quads) for group_rows_checked (by_rows, n_lines =
    n_samples, n_positions = n_features) or group_columns_checked (n_lines = n_features,
    n_positions = n_samples): starts (16 * p * ceil(n_lines / 4),), index (c,) and quads
    (c, 4), with c = ceil(n_lines / 4) * n_positions; p is 1 for columns and for rows the
    number of parts of the features that X @ W sums over (feature_parts), each part's lists
    after the previous part's."""
    capacity = n_groups(n_lines) * n_positions
    return (np.empty(starts_length(n_lines, n_positions, by_rows), np.intc),
            np.empty(capacity, np.intc), np.empty((capacity, GROUP), dtype))


cdef Py_ssize_t checked_cut(Py_ssize_t n_features, object cut) except -1:
    """cut, the first feature of the second part of n_features, checked (None: the middle);
    0 where n_features make one part"""
    if feature_parts(n_features) == 1:
        return 0
    if cut is None:
        return default_cut(n_features)
    if not (isinstance(cut, int) and cut % GROUP == 0
            and PART_MIN_FEATURES <= cut <= n_features - PART_MIN_FEATURES):
        raise ValueError(f"Expected cut None or a multiple of {GROUP} in "
                         f"[{PART_MIN_FEATURES}, {n_features - PART_MIN_FEATURES}] (each part "
                         f"at least {PART_MIN_FEATURES} features). Received: cut={cut!r}")
    return cut


def cut_choices(Py_ssize_t n_features):
    """Where the second part of n_features may start (the cuts that checked_cut takes, the
    middle first); empty where n_features make one part."""
    if feature_parts(n_features) == 1:
        return []
    return [default_cut(n_features)] + [
        cut for cut in range(PART_MIN_FEATURES, n_features - PART_MIN_FEATURES + 1, GROUP)
        if cut != default_cut(n_features)]


def part_bounds(Py_ssize_t n_features, cut=None):
    """The parts of the features that X @ W sums over (in the row groups' layout), the
    second from feature `cut` (None: the middle): their first features, then n_features."""
    cdef Py_ssize_t parts = feature_parts(n_features), c = checked_cut(n_features, cut)
    return [part_start(n_features, parts, part, c) for part in range(parts + 1)]


def rows_of(groups, Py_ssize_t n_samples, Py_ssize_t n_features):
    """(starts, index, quads) from group_buffers(capacity, n_features, dtype, by_rows=True),
    cut for group_rows_checked on a batch of n_samples rows."""
    starts, index, quads = groups
    return starts[:starts_length(n_samples, n_features, True)], index, quads


def _check_row_groups(const int[::1] starts, const int[::1] index, Py_ssize_t n_samples,
                      Py_ssize_t n_features, Py_ssize_t cut):
    """Check row groups of group_buffers(n_samples, n_features, by_rows=True), index and
    quads of at least ceil(n_samples / 4) * n_features entries: each part's lists within its
    entries and its positions."""
    cdef Py_ssize_t parts = feature_parts(n_features), stride = n_groups(n_samples)
    cdef Py_ssize_t part, f0, f1
    for part in range(parts):
        f0 = part_start(n_features, parts, part, cut)
        f1 = part_start(n_features, parts, part + 1, cut)
        _check_lists(starts[PATTERNS * stride * part:PATTERNS * stride * (part + 1)],
                     index[stride * f0:stride * f1], stride * (f1 - f0), f1 - f0)


def _group_checked(const floating[:, ::1] X, int[::1] starts_out, int[::1] index_out,
                   floating[:, ::1] quads_out, bint by_rows, n_threads, cut,
                   const floating[::1] offsets):
    cdef Py_ssize_t n = X.shape[0], k = X.shape[1]
    cdef Py_ssize_t n_lines = n if by_rows else k, n_positions = k if by_rows else n
    cdef Py_ssize_t length = starts_length(n_lines, n_positions, by_rows)
    cdef Py_ssize_t capacity = n_groups(n_lines) * n_positions
    cdef Py_ssize_t nnz
    cdef int threads = _n_threads(n_threads)
    cdef Py_ssize_t c = checked_cut(k, cut)
    if not (starts_out.shape[0] == length
            and index_out.shape[0] >= capacity and quads_out.shape[0] >= capacity
            and quads_out.shape[1] == GROUP and capacity < 2**31
            and (offsets is None or offsets.shape[0] == k)):
        arrays = {"X": X, "starts_out": starts_out, "index_out": index_out,
                  "quads_out": quads_out}
        if offsets is not None:
            arrays["offsets"] = offsets
        raise _shape_error(
            f"X (n, k), starts_out ({length},), index_out "
            f"({capacity},) and quads_out ({capacity}, {GROUP}) or longer, as from "
            f"group_buffers({n_lines}, {n_positions}, dtype, by_rows={bool(by_rows)}), and "
            f"offsets None or (k,)", **arrays)
    if offsets is None:
        offsets = np.empty(0, np.float64 if floating is double else np.float32)
    with nogil:
        nnz = group_lines(X, by_rows, starts_out, index_out, quads_out, c, threads, offsets)
    return nnz


def group_rows_checked(const floating[:, ::1] X, int[::1] starts_out, int[::1] index_out,
                       floating[:, ::1] quads_out, n_threads=None, cut=None,
                       const floating[::1] offsets=None):
    """starts_out, index_out, quads_out := X (X - offsets, one per column, if given) in groups of 4 rows over each part of the features (the second from feature `cut`, None: the middle), for sparse_forward_checked with the same cut; return its number of nonzeros"""
    return _group_checked(X, starts_out, index_out, quads_out, True, n_threads, cut, offsets)


def group_columns_checked(const floating[:, ::1] X, int[::1] starts_out, int[::1] index_out,
                          floating[:, ::1] quads_out, n_threads=None,
                          const floating[::1] offsets=None):
    """starts_out, index_out, quads_out := X (X - offsets, one per column, if given) in groups of 4 columns, for sparse_param_grad_checked; return its number of nonzeros"""
    return _group_checked(X, starts_out, index_out, quads_out, False, n_threads, None, offsets)


def narrow_forward_checked(const floating[:, ::1] X, const floating[:, ::1] W,
                           const floating[::1] b, int activation, floating[:, ::1] Z_out,
                           n_threads=None):
    """Z_out := act(X @ W + b), act of code `activation`, W of at most NARROW_WIDTH columns"""
    if not (X.shape[1] == W.shape[0] and 0 < W.shape[1] <= NARROW_MAX
            and b.shape[0] == W.shape[1] and Z_out.shape[0] == X.shape[0]
            and Z_out.shape[1] == W.shape[1]):
        raise _shape_error(f"X (n, k), W (k, m), b (m,) and Z_out (n, m) with 1 <= m <= "
                           f"{NARROW_MAX}", X=X, W=W, b=b, Z_out=Z_out)
    if not 0 <= activation <= ELU_CODE:
        raise ValueError(f"Expected an activation code in [0, {ELU_CODE}]. "
                         f"Received: activation={activation}")
    cdef int threads = _n_threads(n_threads)
    with nogil:
        narrow_forward(X, W, b, activation, Z_out, threads)


def narrow_input_grad_checked(const floating[:, ::1] delta, const floating[:, ::1] W,
                              floating[:, ::1] dX_out, n_threads=None,
                              const floating[:, ::1] relu_of=None):
    """dX_out := delta @ W.T, W of at most NARROW_WIDTH columns; with relu_of (ReLU's outputs,
    of dX_out's shape), dX_out := where(relu_of > 0, delta @ W.T, 0)"""
    if not (delta.shape[1] == W.shape[1] and 0 < W.shape[1] <= NARROW_MAX
            and dX_out.shape[0] == delta.shape[0] and dX_out.shape[1] == W.shape[0]
            and (relu_of is None or (relu_of.shape[0] == dX_out.shape[0]
                                     and relu_of.shape[1] == dX_out.shape[1]))):
        arrays = {"delta": delta, "W": W, "dX_out": dX_out}
        if relu_of is not None:
            arrays["relu_of"] = relu_of
        raise _shape_error(f"delta (n, m), W (k, m), dX_out (n, k) with 1 <= m <= "
                           f"{NARROW_MAX} and relu_of None or (n, k)", **arrays)
    cdef int threads = _n_threads(n_threads)
    cdef const floating* relu = NULL
    if relu_of is not None and relu_of.shape[0] and relu_of.shape[1]:
        relu = &relu_of[0, 0]
    with nogil:
        narrow_input_grad(delta, W, dX_out, threads, relu, NULL)


def narrow_param_grad_checked(const floating[:, ::1] X, const floating[:, ::1] delta,
                              floating alpha, floating beta, floating[:, ::1] dW_out,
                              floating[::1] db_out, n_threads=None):
    """dW_out := alpha * X.T @ delta + beta * dW_out;  db_out := alpha * sum_rows(delta) + beta * db_out, delta of at most NARROW_WIDTH columns"""
    if not (X.shape[0] == delta.shape[0] and dW_out.shape[0] == X.shape[1]
            and dW_out.shape[1] == delta.shape[1] and 0 < delta.shape[1] <= NARROW_MAX
            and db_out.shape[0] == delta.shape[1]):
        raise _shape_error(f"X (n, k), delta (n, m), dW_out (k, m) and db_out (m,) with "
                           f"1 <= m <= {NARROW_MAX}", X=X, delta=delta, dW_out=dW_out,
                           db_out=db_out)
    cdef int threads = _n_threads(n_threads)
    with nogil:
        narrow_param_grad(X, delta, alpha, beta, dW_out, db_out, threads, NULL)


def sparse_forward_checked(const int[::1] starts, const int[::1] index,
                           const floating[:, ::1] quads, const floating[:, ::1] W,
                           const floating[::1] b, bint relu, floating[:, ::1] Z_out,
                           n_threads=None, floating[:, ::1] partial_out=None,
                           const floating[::1] offsets=None, cut=None,
                           floating[::1] pack=None, bint transposed=False):
    """Z_out := act(X @ W + b), X given by group_rows_checked (with the same cut); n_threads
    None: OpenMP's default. partial_out: Z_out's shape, for the sums of the second part of the features
    (allocated if None; unused with one part). offsets (k,): the groups hold X's distances
    from them (group_rows_checked with the same offsets); Z_out := act(X @ W + b) all the
    same, the offsets' share added as offsets @ W. pack: pack_buffer(k, m, dtype), where the
    products copy W's slabs (allocated if None). transposed: W given as W.T, (m, k), its
    slabs transposed into pack as they are copied (no offsets then)."""
    cdef Py_ssize_t n = Z_out.shape[0]
    cdef Py_ssize_t k = W.shape[1] if transposed else W.shape[0]
    cdef Py_ssize_t m = W.shape[0] if transposed else W.shape[1]
    cdef Py_ssize_t parts = feature_parts(k), capacity = n_groups(n) * k
    if not (k > 0 and b.shape[0] == m and Z_out.shape[1] == m
            and starts.shape[0] == starts_length(n, k, True)
            and quads.shape[1] == GROUP and min(index.shape[0], quads.shape[0]) >= capacity
            and (partial_out is None or (partial_out.shape[0] == n
                                         and partial_out.shape[1] == Z_out.shape[1]))
            and (offsets is None or (offsets.shape[0] == k and not transposed))
            and (pack is None or pack.shape[0] >= pack_length(k, m, sizeof(floating)))):
        arrays = {"starts": starts, "index": index, "quads": quads, "W": W, "b": b,
                  "Z_out": Z_out}
        if partial_out is not None:
            arrays["partial_out"] = partial_out
        if offsets is not None:
            arrays["offsets"] = offsets
        if pack is not None:
            arrays["pack"] = pack
        raise _shape_error(f"starts ({PATTERNS * parts} * ceil(n / {GROUP}),), index (c,) and "
                           f"quads (c, {GROUP}) with c >= ceil(n / {GROUP}) * k, W (k, m) "
                           "((m, k) if transposed), b (m,), Z_out (n, m), partial_out None or "
                           "(n, m), offsets None or (k,) (None if transposed) and pack None "
                           "or of pack_buffer(k, m, dtype)'s length, with k >= 1", **arrays)
    cdef Py_ssize_t c = checked_cut(k, cut)
    _check_row_groups(starts, index, n, k, c)
    if partial_out is None and parts > 1:
        partial_out = np.empty_like(Z_out)
    elif partial_out is None:
        partial_out = Z_out  # unused with one part
    dtype = np.float64 if floating is double else np.float32
    if offsets is None:
        offsets = np.empty(0, dtype)
    cdef floating[:, ::1] offset_sums = np.empty((parts, m), dtype)
    cdef int threads = _n_threads(n_threads)
    if pack is None:
        pack = pack_buffer(k, m, dtype)
    with nogil:
        sparse_forward(starts, index, quads, W, b, offsets, offset_sums, relu, Z_out,
                       partial_out, c, threads, pack, transposed)


def sparse_param_grad_checked(const int[::1] starts, const int[::1] index,
                              const floating[:, ::1] quads, const floating[:, ::1] delta,
                              floating alpha, floating beta, floating[:, ::1] dW_out,
                              floating[::1] db_out, n_threads=None,
                              const floating[::1] offsets=None, cut=None,
                              floating[:, ::1] padded=None):
    """dW_out := alpha * X.T @ delta + beta * dW_out;  db_out := alpha * sum_rows(delta) + beta * db_out, X given by group_columns_checked; offsets (k,): the groups hold X's distances from them (group_columns_checked with the same offsets), and dW_out gains alpha * outer(offsets, sum_rows(delta)) (X.T @ delta all the same); cut: where the threads' parts of dW's rows meet (None: the middle), as in X @ W; padded (at least n rows, wider than m, see delta_stride): where the products read a copy of delta, the same results"""
    if not (delta.shape[0] > 0 and dW_out.shape[0] > 0 and dW_out.shape[1] == delta.shape[1]
            and db_out.shape[0] == delta.shape[1]
            and starts.shape[0] == starts_length(dW_out.shape[0], delta.shape[0], False)
            and quads.shape[1] == GROUP
            and (offsets is None or offsets.shape[0] == dW_out.shape[0])
            and (padded is None or (padded.shape[0] >= delta.shape[0]
                                    and padded.shape[1] > delta.shape[1]))):
        arrays = {"starts": starts, "quads": quads, "delta": delta, "dW_out": dW_out,
                  "db_out": db_out}
        if offsets is not None:
            arrays["offsets"] = offsets
        if padded is not None:
            arrays["padded"] = padded
        raise _shape_error(f"starts ({PATTERNS} * ceil(k / {GROUP}),), quads (c, {GROUP}), "
                           "delta (n, m), dW_out (k, m), db_out (m,), offsets None or (k,) "
                           "and padded None or (>= n, > m) with n, k >= 1", **arrays)
    _check_lists(starts, index, min(index.shape[0], quads.shape[0]), delta.shape[0])
    dtype = np.float64 if floating is double else np.float32
    if offsets is None:
        offsets = np.empty(0, dtype)
    if padded is None:
        padded = np.empty((0, 0), dtype)
    cdef floating[::1] delta_sums = np.empty(delta.shape[1], dtype)
    cdef int threads = _n_threads(n_threads)
    cdef Py_ssize_t c = checked_cut(dW_out.shape[0], cut)
    with nogil:
        sparse_param_grad(starts, index, quads, delta, alpha, beta, dW_out, db_out, offsets,
                          delta_sums, c, threads, NULL, padded)
