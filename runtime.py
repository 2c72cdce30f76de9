"""TensorFlow's process environment, set before TensorFlow loads: every entry point imports this module first.

TensorFlow reads these variables once, when it is imported, so they cannot be set later. A value the user
has already set wins.
"""

import os

# Only warnings and errors from TensorFlow's C++ side; its info lines bury the training log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow uses oneDNN's CPU kernels by itself only on CPUs with AVX-512 VNNI or AMX; on others (AMD EPYC,
# older Xeons) its own kernels, built without FMA, train this model markedly slower (docs/results.md;
# `TF_ENABLE_ONEDNN_OPTS=0|1 python -m benchmarks.train_speed --configs default` measures it).
# TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
