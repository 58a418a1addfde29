"""One epoch of a bag-of-words MLP on a scipy.sparse CSR matrix, fastnaive against PyTorch and
scikit-learn in one run: seconds per epoch at 1 and 2 threads, as a Markdown table.

Run from the repository root:

    python benchmarks/bag_of_words.py [--quick] [--repeats N] [--synthetic]

The data: every three consecutive non-blank lines of the Python files of ten packages of the
standard library of the Python running this (idlelib, asyncio, email, ...; their test folders
left out), labelled with their package, about 27,000 samples here. Features are the chunk's
character 3-, 4- and 5-grams hashed into 2**17 = 131,072 columns, weighted 1 + log(count) and
each row scaled to unit length: 0.2% nonzero, like a text classifier's input. Where the
standard library's sources are missing (or with --synthetic), a generator stands in: each
document draws its tokens from a Zipf(1.1) background over the 131,072 ids mixed with a
Zipf(1.1) topic over a permutation of the ids that is its class's own. Everything is seeded.

The model: n_features -> 64 relu -> n_classes softmax, float32, Glorot-uniform weights from
fastnaive (seeds 0 and 1) copied into every trainer, plain SGD (lr LEARNING_RATE, no momentum,
no weight decay), batches of 128 in order (no shuffling), so that every trainer takes the same
steps from the same start and their epoch losses agree. Trainers:
- fastnaive.fit on the CSR matrix (once the engine takes scipy.sparse inputs; until then its
  row says why not);
- "fastnaive kernels": a loop of a few lines over fastnaive._csr's kernels (the first
  layer's forward and its fused SGD update on the batch's nonzeros only) and NumPy for the
  64 -> classes layer: what the kernels cost inside a step, for timing only;
- PyTorch: torch.sparse.mm on each batch as a CSR tensor (W1's gradient and update are dense,
  as torch makes them), and nn.EmbeddingBag(mode="sum", sparse=True) with per-sample weights,
  whose gradient and SGD update touch only the rows the batch hits;
- scikit-learn's MLPClassifier(solver="sgd", batch_size=128, momentum=0, alpha=0,
  shuffle=False, max_iter=1) on the same CSR matrix, its weights set to the same start (a fit
  on one sample of each class, then coefs_ and intercepts_ overwritten, then warm_start).
Each trainer runs in its own phase after a pause (workloads.settle), at each thread count; a
time is the best of --repeats epochs (default 3), each from the same initial weights. A peer
that is not installed gets a "not installed" row. --quick runs a small problem (2**14
columns, 1,000 samples, one epoch) to check that the script works; nothing here fails on
timing.
"""

import argparse
import functools
import importlib.metadata
import os
import sysconfig
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import workloads
from threadpoolctl import threadpool_limits

import fastnaive
from fastnaive import _csr

N_FEATURES, QUICK_FEATURES = 2**17, 2**14
QUICK_SAMPLES = 1000
HIDDEN = 64
BATCH_SIZE = 128
LEARNING_RATE = 0.5
THREADS = (1, 2)
NGRAMS = (3, 4, 5)
CHUNK_LINES = 3
PACKAGES = (
    "idlelib",
    "asyncio",
    "email",
    "tkinter",
    "xml",
    "multiprocessing",
    "unittest",
    "importlib",
    "http",
    "logging",
)
# Below this many samples or classes the standard library is too thin; the generator stands in.
MIN_SAMPLES, MIN_CLASSES = 5000, 4
SYNTHETIC_SAMPLES, SYNTHETIC_CLASSES, SYNTHETIC_LENGTH, TOPIC_SHARE = 30000, 10, 300, 0.3
FASTNAIVE_FIT, KERNELS = "fastnaive.fit", "fastnaive kernels"
TORCH_MM, TORCH_BAG, SKLEARN = "torch sparse.mm", "torch EmbeddingBag", "sklearn MLPClassifier"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small problem, once")
    parser.add_argument("--repeats", type=int, default=None, metavar="N", help="epochs timed")
    parser.add_argument("--synthetic", action="store_true", help="the generator's data")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


# ---- the data ----


def stdlib_chunks(per_class=None):
    """(texts, labels, names): CHUNK_LINES non-blank lines at a time of each package's .py
    files outside its test folders, at most per_class chunks of each."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, labels, names = [], [], []
    for package in PACKAGES:
        chunks = []
        for file in sorted((root / package).rglob("*.py")):
            if any("test" in part for part in file.relative_to(root / package).parts[:-1]):
                continue
            lines = [line.strip() for line in file.read_text("utf-8", "replace").splitlines()]
            lines = [line for line in lines if line]
            chunks += [
                "\n".join(lines[i : i + CHUNK_LINES])
                for i in range(0, len(lines) - CHUNK_LINES + 1, CHUNK_LINES)
            ]
            if per_class is not None and len(chunks) >= per_class:
                break
        if chunks:
            texts += chunks[:per_class]
            labels += [len(names)] * len(chunks[:per_class])
            names.append(package)
    return texts, np.array(labels, np.intp), names


def hashed_ngrams(texts, n_features):
    """CSR (len(texts), n_features): counts of each text's character NGRAMS (UTF-8 bytes),
    hashed by a polynomial over the bytes and a multiplicative hash to the column."""
    encoded = [text.encode() for text in texts]
    lengths = np.array([len(b) for b in encoded])
    buffer = np.frombuffer(b"".join(encoded), np.uint8).astype(np.uint64)
    owner = np.repeat(np.arange(len(texts)), lengths)
    shift = np.uint64(64 - int(np.log2(n_features)))
    samples, columns = [], []
    for n in NGRAMS:
        windows = len(buffer) - n + 1
        if windows <= 0:
            continue
        code = np.full(windows, n, np.uint64)  # unsigned arithmetic wraps, as hashing wants
        for t in range(n):
            code = code * np.uint64(257) + buffer[t : t + windows]
        inside = owner[:windows] == owner[n - 1 :]  # the n-gram lies within one text
        samples.append(owner[:windows][inside])
        columns.append((code[inside] * np.uint64(0x9E3779B97F4A7C15)) >> shift)
    samples, columns = np.concatenate(samples), np.concatenate(columns).astype(np.intp)
    ones = np.ones(len(samples), np.float32)
    return sp.csr_matrix((ones, (samples, columns)), shape=(len(texts), n_features))


def synthetic_tokens(n_samples, n_classes, n_features, length, seed=0):
    """CSR token counts and labels: each token is from a Zipf(1.1) background over the ids or,
    with probability TOPIC_SHARE, from a Zipf(1.1) topic over the ids permuted for its class."""
    rng = np.random.default_rng(seed)
    zipf = 1.0 / np.arange(1, n_features + 1) ** 1.1
    zipf /= zipf.sum()
    labels = rng.integers(0, n_classes, n_samples)
    ranks = rng.choice(n_features, (n_samples, length), p=zipf)
    topics = np.stack([rng.permutation(n_features) for _ in range(n_classes)])
    topical = rng.random((n_samples, length)) < TOPIC_SHARE
    tokens = np.where(topical, topics[labels[:, None], ranks], ranks)
    samples = np.repeat(np.arange(n_samples), length)
    ones = np.ones(samples.size, np.float32)
    counts = sp.csr_matrix((ones, (samples, tokens.ravel())), shape=(n_samples, n_features))
    return counts, labels.astype(np.intp)


def tf_normalised(counts):
    """1 + log(count) on the nonzeros, each row scaled to unit length (float32, sorted, no
    duplicates)."""
    X = counts.tocsr()
    X.sum_duplicates()
    X.data = 1 + np.log(X.data)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = sp.csr_matrix(sp.diags(1 / np.maximum(norms, 1e-12)) @ X, dtype=np.float32)
    X.sort_indices()
    return X


def bag_of_words(quick, synthetic, seed=0):
    """(X, y, description): the problem as a float32 CSR matrix and labels, the samples in
    one seeded random order (the trainers do not shuffle)."""
    n_features = QUICK_FEATURES if quick else N_FEATURES
    texts, y, names = [], None, []
    if not synthetic:
        texts, y, names = stdlib_chunks(QUICK_SAMPLES // len(PACKAGES) if quick else None)
    if len(names) >= MIN_CLASSES and (quick or len(texts) >= MIN_SAMPLES):
        X = hashed_ngrams(texts, n_features)
        source = f"Python {sysconfig.get_python_version()}'s {', '.join(names)}"
    else:
        n_samples = QUICK_SAMPLES if quick else SYNTHETIC_SAMPLES
        X, y = synthetic_tokens(n_samples, SYNTHETIC_CLASSES, n_features, SYNTHETIC_LENGTH, seed)
        source = "the Zipf topic generator"
    order = np.random.default_rng(seed).permutation(len(y))
    return tf_normalised(X[order]), y[order], source


# ---- the trainers: each runs one epoch from `start` and returns the epoch's mean loss ----


def initial_weights(n_features, n_classes):
    """[W1, b1, W2, b2] of the fastnaive model of the docstring."""
    return [w.copy() for w in fastnaive_model(n_features, n_classes).weights]


def fastnaive_model(n_features, n_classes):
    dense = functools.partial(fastnaive.NaiveDense, initializer="glorot_uniform")
    return fastnaive.NaiveSequential(
        [dense(n_features, HIDDEN, "relu", seed=0), dense(HIDDEN, n_classes, "softmax", seed=1)]
    )


def fit_epoch(X, y, start, n_threads):
    model = fastnaive_model(X.shape[1], start[3].shape[0])
    for weight, value in zip(model.weights, start):
        weight[...] = value
    with threadpool_limits(limits=n_threads):
        begin = time.perf_counter()
        history = fastnaive.fit(
            model, X, y, epochs=1, batch_size=BATCH_SIZE,
            optimizer=fastnaive.SGD(LEARNING_RATE), verbose=0,
        )  # fmt: skip
        seconds = time.perf_counter() - begin
    return history.history["loss"][-1], seconds


def fit_unavailable(n_classes):
    """None when fastnaive.fit takes a CSR matrix, else why not (tried on a tiny one)."""
    X = sp.csr_matrix(np.eye(2, 50, dtype=np.float32))
    try:
        fit_epoch(X, np.arange(2) % n_classes, initial_weights(50, n_classes), 1)
    except (TypeError, ValueError) as error:
        return f"not available yet: {type(error).__name__}: {str(error)[:80]}"
    return None


class KernelLoop:
    """The first layer on fastnaive._csr's kernels, the second in NumPy; plain SGD, with the
    first layer's update fused into its transpose product (alpha = -lr, beta = 1). The CSR
    arrays are converted to intp once, here, as the engine will at its boundary."""

    def __init__(self, X, y):
        self.data, self.indices, self.indptr = X.data, X.indices.astype(np.intp), X.indptr
        self.indptr = self.indptr.astype(np.intp)
        _csr.check_csr(self.data, self.indices, self.indptr, X.shape[1])
        self.y, self.rows = y, np.arange(X.shape[0], dtype=np.intp)

    def __call__(self, start, n_threads):
        W1, b1, W2, b2 = (w.copy() for w in start)
        n, total = len(self.rows), 0.0
        begin = time.perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):
            for first in range(0, n, BATCH_SIZE):
                rows, y = self.rows[first : first + BATCH_SIZE], self.y[first : first + BATCH_SIZE]
                z = np.empty((len(rows), HIDDEN), np.float32)
                _csr.csr_forward_checked(
                    self.data, self.indices, self.indptr, rows, W1, b1, z, n_threads
                )
                h = np.maximum(z, 0)
                logits = h @ W2 + b2
                logits -= logits.max(axis=1, keepdims=True)
                p = np.exp(logits)
                total_p = p.sum(axis=1)
                total += float(np.sum(np.log(total_p) - logits[np.arange(len(y)), y]))
                p /= total_p[:, None]
                p[np.arange(len(y)), y] -= 1
                p /= len(y)
                delta1 = (p @ W2.T) * (z > 0)
                W2 -= LEARNING_RATE * (h.T @ p)
                b2 -= LEARNING_RATE * p.sum(axis=0)
                _csr.csr_param_grad_checked(
                    self.data, self.indices, self.indptr, rows, delta1,
                    -LEARNING_RATE, 1.0, W1, b1, n_threads,
                )  # fmt: skip
        return total / n, time.perf_counter() - begin


class TorchTrainer:
    """Each batch as a torch CSR tensor over the matrix's own arrays (no copy but the
    rebased row pointers); W1 a dense parameter (sparse_mm) or an EmbeddingBag."""

    def __init__(self, X, y, embedding_bag):
        import torch

        self.torch, self.embedding_bag = torch, embedding_bag
        self.data = torch.from_numpy(X.data)
        self.indices = torch.from_numpy(X.indices.astype(np.int64))
        self.indptr, self.shape = X.indptr.astype(np.int64), X.shape
        self.y = torch.from_numpy(y.astype(np.int64))

    def __call__(self, start, n_threads):
        torch = self.torch
        torch.set_num_threads(n_threads)
        # torch warns that its CSR tensors are in beta and go unchecked (they come from SciPy).
        warnings.filterwarnings("ignore", "Sparse", UserWarning)
        W1, b1, W2, b2 = (torch.tensor(w, requires_grad=True) for w in start)
        if self.embedding_bag:
            bag = torch.nn.EmbeddingBag(*W1.shape, mode="sum", sparse=True, _weight=W1.detach())
            parameters = [bag.weight, b1, W2, b2]
        else:
            parameters = [W1, b1, W2, b2]
        optimizer = torch.optim.SGD(parameters, lr=LEARNING_RATE)
        n, total = self.shape[0], 0.0
        begin = time.perf_counter()
        for first in range(0, n, BATCH_SIZE):
            last = min(first + BATCH_SIZE, n)
            p0, p1 = self.indptr[first], self.indptr[last]
            values, columns = self.data[p0:p1], self.indices[p0:p1]
            if self.embedding_bag:
                offsets = torch.from_numpy(self.indptr[first:last] - p0)
                z = bag(columns, offsets, per_sample_weights=values) + b1
            else:
                rows = torch.from_numpy(self.indptr[first : last + 1] - p0)
                batch = torch.sparse_csr_tensor(
                    rows, columns, values, (last - first, self.shape[1])
                )
                z = torch.sparse.mm(batch, W1) + b1
            loss = torch.nn.functional.cross_entropy(torch.relu(z) @ W2 + b2, self.y[first:last])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * (last - first)
        return total / n, time.perf_counter() - begin


class SklearnTrainer:
    def __init__(self, X, y):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        self.X, self.y, self.warning = X, y, ConvergenceWarning
        self.classifier = lambda: MLPClassifier(
            hidden_layer_sizes=(HIDDEN,), activation="relu", solver="sgd",
            batch_size=BATCH_SIZE, learning_rate="constant", learning_rate_init=LEARNING_RATE,
            momentum=0.0, nesterovs_momentum=False, alpha=0.0, max_iter=1, shuffle=False,
            early_stopping=False, warm_start=True, random_state=0,
        )  # fmt: skip

    def __call__(self, start, n_threads):
        classifier = self.classifier()
        one_of_each = np.unique(self.y, return_index=True)[1]
        with warnings.catch_warnings(), threadpool_limits(limits=n_threads):
            warnings.simplefilter("ignore", self.warning)
            warnings.simplefilter("ignore", UserWarning)  # batch_size clipped to 10 samples
            classifier.fit(self.X[one_of_each], self.y[one_of_each])
            dtype = classifier.coefs_[0].dtype
            classifier.coefs_ = [start[0].astype(dtype), start[2].astype(dtype)]
            classifier.intercepts_ = [start[1].astype(dtype), start[3].astype(dtype)]
            begin = time.perf_counter()
            classifier.fit(self.X, self.y)  # the timed epoch: warm_start keeps the weights
            seconds = time.perf_counter() - begin
        return classifier.loss_, seconds


# ---- the run ----


def trainers(X, y):
    """{name: epoch(start, n_threads) -> (mean loss, seconds), or why there is none}."""
    found = {}
    found[FASTNAIVE_FIT] = fit_unavailable(int(y.max()) + 1) or functools.partial(fit_epoch, X, y)
    found[KERNELS] = KernelLoop(X, y)
    for name, make in (
        (TORCH_MM, lambda: TorchTrainer(X, y, embedding_bag=False)),
        (TORCH_BAG, lambda: TorchTrainer(X, y, embedding_bag=True)),
        (SKLEARN, lambda: SklearnTrainer(X, y)),
    ):
        try:
            found[name] = make()
        except ImportError:
            found[name] = "not installed"
    return found


def timed_epochs(epoch, start, n_threads, repeats):
    """(best seconds, mean loss of the last epoch) over `repeats` epochs from `start`; each
    trainer times its own epoch, without its set-up."""
    best, loss = float("inf"), None
    for _ in range(repeats):
        loss, seconds = epoch(start, n_threads)
        best = min(best, seconds)
    return best, loss


def versions():
    names = ("fastnaive", "numpy", "scipy", "torch", "scikit-learn")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def main(argv=None):
    args = parse_args(argv)
    begin = time.perf_counter()
    X, y, source = bag_of_words(args.quick, args.synthetic)
    n_classes = int(y.max()) + 1
    print(
        f"Data: {source}: {X.shape[0]} samples, {X.shape[1]} columns, {n_classes} classes, "
        f"{X.nnz / X.shape[0]:.0f} nonzeros a row ({100 * X.nnz / np.prod(X.shape):.2f}%), "
        f"built in {time.perf_counter() - begin:.1f} s"
    )
    print(f"CPU: {workloads.cpu_description()}, {os.cpu_count()} cores; {versions()}")
    print(
        f"Model: {X.shape[1]} -> {HIDDEN} relu -> {n_classes} softmax, float32, SGD lr "
        f"{LEARNING_RATE}, batch {BATCH_SIZE}; best of {args.repeats} epoch(s), threads "
        f"{', '.join(map(str, THREADS))}"
    )
    start = initial_weights(X.shape[1], n_classes)
    results = {}
    for name, epoch in trainers(X, y).items():
        for n_threads in THREADS:
            if isinstance(epoch, str):
                results[name, n_threads] = (None, epoch)
                continue
            workloads.settle()
            results[name, n_threads] = timed_epochs(epoch, start, n_threads, args.repeats)
    print()
    print(table(results))


def table(results):
    reference = FASTNAIVE_FIT if results[FASTNAIVE_FIT, 1][0] is not None else KERNELS
    rows = []
    for (name, n_threads), (seconds, loss) in results.items():
        if seconds is None:
            rows.append((name, n_threads, "-", "-", loss))
            continue
        ratio = seconds / results[reference, n_threads][0]
        rows.append((name, n_threads, f"{seconds:.3f}", f"{ratio:.2f}", f"{loss:.4f}"))
    headers = ("trainer", "threads", "s / epoch", f"x {reference}", "epoch mean loss")
    return workloads.markdown_table(headers, rows)


if __name__ == "__main__":
    main()
