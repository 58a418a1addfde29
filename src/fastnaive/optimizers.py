"""Optimizers that update the models' live weight arrays in place, as Keras' do.

Each update is one fused kernel over a weight array and its gradient. State
(velocities, moments) is kept per weight array, created at its first update. One step's
kernels run as one sequence (`fastnaive._kernels.run_calls`), the counter of steps with
them, so that an exception raised by a signal handler finds every weight before the step or
every weight after it.
"""

import math
import numbers

import numpy as np

from fastnaive import _cpus, _kernels, _memory
from fastnaive._validation import learning_rate as checked_learning_rate

__all__ = ["Optimizer", "SGD", "Adam", "Update", "get", "checked_pairs"]


def checked_pairs(grads_and_vars):
    """Return [(flat gradient, flat weight, weight)], checked to agree in shape and dtype.

    Weights may not overlap one another; a gradient that overlaps a weight is copied, so that
    updating one weight cannot change the gradient of another.
    """
    grads_and_vars = list(grads_and_vars)
    weights = [weight for _, weight in grads_and_vars]
    pairs = []
    for i, (gradient, weight) in enumerate(grads_and_vars):
        if not (isinstance(weight, np.ndarray) and weight.dtype in (np.float32, np.float64)):
            raise TypeError(
                f"Expected weights[{i}] to be a float32 or float64 NumPy array. "
                f"Received: {type(weight).__name__} "
                f"of dtype {getattr(weight, 'dtype', None)}"
            )
        if not (weight.flags.c_contiguous and weight.flags.writeable):
            raise ValueError(
                f"Expected weights[{i}] to be writeable and C-contiguous. "
                f"Received: c_contiguous={weight.flags.c_contiguous}, "
                f"writeable={weight.flags.writeable}"
            )
        gradient = np.asarray(gradient)
        if gradient.shape != weight.shape:
            raise ValueError(
                f"Expected gradients[{i}] of shape {weight.shape}, its weight's. "
                f"Received: gradients[{i}].shape={gradient.shape}"
            )
        if gradient.dtype.kind not in "iuf":
            raise TypeError(
                f"Expected gradients[{i}] of a real dtype. "
                f"Received: gradients[{i}].dtype={gradient.dtype}"
            )
        for j in range(i):
            if np.may_share_memory(weight, weights[j]):
                raise ValueError(
                    f"Expected each weight in its own array. "
                    f"Received: weights[{i}] overlapping weights[{j}]"
                )
        gradient = np.ascontiguousarray(gradient, dtype=weight.dtype)
        if any(np.may_share_memory(gradient, w) for w in weights):
            gradient = gradient.copy()
        pairs.append((gradient.reshape(-1), weight.reshape(-1), weight))
    return pairs


def _fraction(value, name):
    """Return value as a float in [0, 1), or raise naming `name`."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Real)
        or not 0 <= value < 1
    ):
        raise ValueError(f"Expected {name} in [0, 1). Received: {name}={value!r}")
    return float(value)


class Optimizer:
    """Base class: a validated learning rate, state per weight position, apply_gradients.

    A subclass defines `_update_call` (the kernel call of one weight's step from its
    gradient) and `change_bound` (how far a step can move a weight), and may declare
    `gemm_scale`: the s for which its step is exactly w := w + s * g, so that the step can
    run inside the GEMM that produces g, or `element_rule`: its step as an element rule of
    fastnaive._kernels, which the weight-gradient kernels apply to each block of g as they
    produce it (fastnaive.engine.Step does either; no caller asks which optimizer it holds).
    """

    #: The number of state arrays kept per weight (momentum 1, Adam 2).
    n_slots = 0

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate
        # The step count lives in an array, so that the step's kernels count it (run_calls).
        self._count = np.zeros(1, np.int64)
        self._slots = []
        self._unplaced = set()  # positions whose state arrays set_state gave
        self._placements = 0  # counts the changes to _slots' arrays (Update.rule's cache)
        # Upper bounds of |state| per slot kind, advanced by change_bound (in place: a step
        # that runs in one compiled call advances them there).
        self._slot_bounds = np.zeros(2)
        self._dtype = np.float64  # the weights' dtype of the last step asked for

    @property
    def iterations(self):
        """The number of steps taken."""
        return int(self._count[0])

    @iterations.setter
    def iterations(self, value):
        self._count[0] = value

    @property
    def learning_rate(self):
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._learning_rate = checked_learning_rate(value)

    @property
    def gemm_scale(self):
        """s when this optimizer's step is w := w + s * g; None when it needs more than g."""
        return None

    def element_rule(self, dtype):
        """The next step as (kind, learning_rate, momentum, alpha, 1 - beta_1, 1 - beta_2,
        epsilon) for weights of `dtype` (fastnaive._program.Program.apply_rule), kind one of
        fastnaive._kernels' *_RULE; None when it has none (then gemm_scale or the calls)."""
        return None

    def state_arrays(self, weights):
        """The state arrays of each of `weights` (by position), flat, zeros at first."""
        return [self._slot(position, weight) for position, weight in enumerate(weights)]

    def _slot(self, position, weight):
        """The state arrays of the weight at `position`, zeros at its first update."""
        while len(self._slots) <= position:
            self._slots.append(None)
        slot = self._slots[position]
        fits = slot is not None and (slot[0].shape, slot[0].dtype) == ((weight.size,), weight.dtype)
        if not fits or position in self._unplaced:
            # Each state array starts (k + 1) KiB after its weight within a page (4K aliasing).
            start = _memory.page_offset(weight)
            placed = [
                _memory.zeros_at(weight.size, weight.dtype, start + 1024 * (k + 1))
                for k in range(self.n_slots)
            ]
            if fits:
                for new, old in zip(placed, slot):
                    new[...] = old
            slot = self._slots[position] = placed
            self._unplaced.discard(position)
            self._placements += 1
        return slot

    def get_state(self):
        """{"iterations": int, "slots": [[array, ...] per weight]}: copies of the state."""
        return {
            "iterations": self.iterations,
            "slots": [[a.copy() for a in slot] if slot else [] for slot in self._slots],
        }

    def set_state(self, state):
        """Restore what get_state returned (arrays are copied); the next step continues it."""
        try:
            iterations, slots = state["iterations"], state["slots"]
        except (TypeError, KeyError):
            raise ValueError(
                f"Expected state with the keys 'iterations' and 'slots'. "
                f"Received: {type(state).__name__}"
            ) from None
        if (
            isinstance(iterations, (bool, np.bool_))
            or not isinstance(iterations, numbers.Integral)
            or iterations < 0
        ):
            raise ValueError(
                f"Expected state['iterations'] to be an integer >= 0. Received: {iterations!r}"
            )
        checked = []
        for i, slot in enumerate(slots):
            slot = [np.array(a, copy=True).reshape(-1) for a in slot]
            if slot and len(slot) != self.n_slots:
                raise ValueError(
                    f"Expected {self.n_slots} state arrays per weight for "
                    f"{type(self).__name__}. Received: {len(slot)} for weight {i}"
                )
            if any(a.dtype.kind != "f" or a.shape != slot[0].shape for a in slot):
                raise ValueError(
                    f"Expected the state arrays of weight {i} to be float arrays "
                    f"of one size. Received: "
                    f"{[(a.dtype.name, a.shape) for a in slot]}"
                )
            checked.append(slot or None)
        self.iterations = int(iterations)
        self._slots = checked
        self._unplaced = set(range(len(checked)))
        self._placements += 1
        self._slot_bounds[:] = [
            max((_max_abs(slot[k]) for slot in checked if slot), default=0.0)
            if k < self.n_slots
            else 0.0
            for k in range(2)
        ]

    def apply_gradients(self, grads_and_vars):
        """Update each weight array in place from its gradient; one optimizer step (on
        OpenMP's default thread count, at most the usable CPUs: _cpus.capped)."""
        calls = self.step_calls(checked_pairs(grads_and_vars))
        with _cpus.capped():
            _kernels.run_calls(calls)

    def step_calls(self, pairs):
        """The kernel calls of one step on `pairs` (for _kernels.run_calls), counting it."""
        step = {}  # what the step's calls share, computed once (Adam's step size per dtype)
        calls = [
            self._update_call(position, gradient, flat_weight, weight, step)
            for position, (gradient, flat_weight, weight) in enumerate(pairs)
        ]
        calls.append(self.count_call())
        return calls

    def count_call(self):
        """The kernel call that counts one step (for a step the GEMMs applied)."""
        return _kernels.increment, (self._count,)

    def change_bound(self, gradient_bound):
        """Return (b, s) for the next step on gradients of |g| <= gradient_bound: no weight
        moves by more than b and no state value exceeds s. The state's bounds advance.

        Computed from the step's rule (_bound_rule) by fastnaive._kernels.change_bound_checked;
        a subclass whose step has none defines its own."""
        rule = self._bound_rule()
        if rule is None:
            raise NotImplementedError
        return _kernels.change_bound_checked(rule, self._slot_bounds, gradient_bound)

    def _bound_rule(self):
        """The next step's rule for change_bound: its element_rule, or None."""
        return self.element_rule(self._dtype)

    def _update_call(self, position, gradient, flat_weight, weight, step):
        """(kernel, arguments): the step of the weight at `position`; `step` is a dict the
        calls of one step share."""
        raise NotImplementedError


class SGD(Optimizer):
    """w := w - learning_rate * g; with momentum, v := momentum * v - lr * g and w := w + v."""

    def __init__(self, learning_rate=1e-3, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        self.momentum = _fraction(momentum, "momentum")
        self.nesterov = bool(nesterov)

    @property
    def n_slots(self):
        return 1 if self.momentum else 0

    @property
    def gemm_scale(self):
        return -self.learning_rate if self.momentum == 0 else None

    def element_rule(self, dtype):
        if self.momentum == 0:
            return None
        kind = _kernels.NESTEROV_RULE if self.nesterov else _kernels.MOMENTUM_RULE
        return kind, self.learning_rate, self.momentum, 0.0, 0.0, 0.0, 0.0

    def _bound_rule(self):
        if self.momentum == 0:  # w := w - learning_rate g, in the GEMMs or not
            return _kernels.PLAIN_RULE, self.learning_rate, 0.0, 0.0, 0.0, 0.0, 0.0
        return super()._bound_rule()

    def _update_call(self, position, gradient, flat_weight, weight, step):
        if self.momentum == 0:
            return _kernels.axpy_checked, (gradient, flat_weight, -self.learning_rate)
        (velocity,) = self._slot(position, weight)
        return _kernels.momentum_update_checked, (
            flat_weight,
            gradient,
            velocity,
            self.learning_rate,
            self.momentum,
            self.nesterov,
        )

    def __repr__(self):
        extra = f", momentum={self.momentum:g}, nesterov={self.nesterov}" if self.momentum else ""
        return f"SGD(learning_rate={self.learning_rate:g}{extra})"


class Adam(Optimizer):
    """Adam (Kingma & Ba), with Keras' bias correction folded into the step size."""

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1 = _fraction(beta_1, "beta_1")
        self.beta_2 = _fraction(beta_2, "beta_2")
        self.epsilon = checked_learning_rate(epsilon, "epsilon")
        # per dtype: (what the step size depends on, the step size, whether float64)
        self._alphas = {}
        self._betas = (None,)  # ((beta_1, beta_2), the two as float32 numbers)

    n_slots = 2

    def _alpha(self, dtype=np.float64):
        """The step size of the next step with Keras 3's bias correction, computed as Keras
        computes it: in the weights' dtype, from the betas as float32 numbers (once a step
        per dtype: the step and its overflow bound both ask)."""
        key = (self._count.item(0), self._learning_rate, self.beta_1, self.beta_2)
        self._dtype = dtype
        known = self._alphas.get(dtype)
        if known is not None and known[0] == key:
            return known[1]
        double = known[2] if known is not None else np.dtype(dtype) == np.float64
        if double:
            # Python's floats are doubles: the same operations (C's pow, a correctly rounded
            # square root), the same bits, without NumPy's scalar overhead.
            betas = self._betas
            if betas[0] != key[2:]:
                betas = self._betas = (key[2:], *(float(np.float32(b)) for b in key[2:]))
            t = float(key[0] + 1)
            alpha = key[1] * math.sqrt(1.0 - betas[2] ** t) / (1.0 - betas[1] ** t)
        else:
            # The same float32 operations as NumPy's float32 scalars, compiled.
            alpha = _kernels.adam_alpha_float32(key[1], key[2], key[3], key[0] + 1)
        self._alphas[dtype] = (key, alpha, double)
        return alpha

    def element_rule(self, dtype):
        decay = (1 - self.beta_1, 1 - self.beta_2)  # in double, rounded once as Keras does
        return _kernels.ADAM_RULE, 0.0, 0.0, self._alpha(dtype), *decay, self.epsilon

    def _update_call(self, position, gradient, flat_weight, weight, step):
        m, v = self._slot(position, weight)
        if weight.dtype not in step:
            step[weight.dtype] = self._alpha(weight.dtype)
        decay = (1 - self.beta_1, 1 - self.beta_2)  # in double, rounded once as Keras does
        arguments = (flat_weight, gradient, m, v, step[weight.dtype], *decay)
        return _kernels.adam_update_checked, (*arguments, self.epsilon)

    def __repr__(self):
        return (
            f"Adam(learning_rate={self.learning_rate:g}, beta_1={self.beta_1:g}, "
            f"beta_2={self.beta_2:g}, epsilon={self.epsilon:g})"
        )


def get(name, learning_rate=None):
    """Return a new optimizer by name, in any case: "sgd", "momentum" (SGD, momentum 0.9) or
    "adam"."""
    makers = {"sgd": SGD, "momentum": lambda **kw: SGD(momentum=0.9, **kw), "adam": Adam}
    if not isinstance(name, str) or name.lower() not in makers:
        raise ValueError(
            f"Expected optimizer 'sgd', 'momentum' or 'adam' (any case). Received: {name!r}"
        )
    maker = makers[name.lower()]
    return maker() if learning_rate is None else maker(learning_rate=learning_rate)


class Update:
    """One optimizer's steps on fixed gradient and weight arrays, checked once for all steps.

    `gemm_scale` is read at every step (a callback may change the learning rate): when it is
    not None, the caller may fold the step into the GEMMs that produce the gradients, adding
    `fused_calls()` to theirs; when `rule(dtype)` is not None, the caller may apply it in
    the weight-gradient kernels, as they produce each block of the gradients, adding
    `fused_calls()` too; otherwise it runs `calls()`, the step's kernels. Both are
    lists for fastnaive._kernels.run_calls, which runs a step's writes with no Python code
    between them. Any other object with apply_gradients is accepted (`atomic` is then False):
    calling the Update passes it the pairs as Keras would.
    """

    def __init__(self, optimizer, gradients, weights):
        self.optimizer = optimizer
        self.gradients, self.weights = gradients, weights
        self.atomic = isinstance(optimizer, Optimizer)
        self.pairs = checked_pairs(zip(gradients, weights)) if self.atomic else None
        self._state = None  # (the optimizer's placements, its state arrays of `weights`)

    @property
    def gemm_scale(self):
        return getattr(self.optimizer, "gemm_scale", None)

    def calls(self):
        """The kernel calls of one step from the gradient arrays (atomic optimizers)."""
        return self.optimizer.step_calls(self.pairs)

    def rule(self, dtype):
        """(element rule, state arrays per weight) of the next step for weights of `dtype`
        (atomic optimizers with an element_rule), or None."""
        if not self.atomic:
            return None
        optimizer = self.optimizer
        rule = optimizer.element_rule(dtype)
        if rule is None:
            return None
        # The state arrays stay the same until the optimizer places others (set_state, a
        # weight of another size at a position); as tuples, which the Program binds once.
        if self._state is None or self._state[0] != optimizer._placements:
            arrays = tuple(map(tuple, optimizer.state_arrays(self.weights)))
            self._state = (optimizer._placements, arrays)
        return rule, self._state[1]

    def fused_calls(self):
        """The kernel call that counts a step the gradient kernels applied (gemm_scale or
        rule)."""
        return [self.optimizer.count_call()]

    def change_bound(self, gradient_bound):
        """Optimizer.change_bound for atomic optimizers; (inf, inf) (unknown) otherwise."""
        if not self.atomic:
            return math.inf, math.inf
        return self.optimizer.change_bound(gradient_bound)

    @property
    def slot_bounds(self):
        """The optimizer's bounds of |state| per kind of state array, which change_bound
        advances: (2,) float64, for a step that advances them in compiled code (atomic
        optimizers)."""
        return self.optimizer._slot_bounds

    @property
    def counter(self):
        """The optimizer's step count, (1,) int64, which fused_calls' call increments."""
        return self.optimizer._count

    def __call__(self):
        """Apply one step from the gradient arrays."""
        if self.atomic:
            _kernels.run_calls(self.calls())
        else:
            self.optimizer.apply_gradients(zip(self.gradients, self.weights))


def _max_abs(array):
    """max |array| as a float (inf when it holds NaN or infinity)."""
    array = np.ascontiguousarray(array).reshape(-1)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    return _kernels.max_abs_checked(array)
