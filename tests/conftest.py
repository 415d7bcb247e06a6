"""Test configuration: float64 on, so dense references can be compared to 1e-5.

Float32 paths are tested by passing float32 arrays explicitly (dtypes are preserved).

XLA compiles with fewer optimizations (``xla_flags.FAST_COMPILE``, added to any ``XLA_FLAGS`` of the
environment before the backend starts): most tests run small programs once, so compilation, not
execution, is most of the suite's time, and these flags cut the suite's CPU time by about a
quarter.

Compiled programs go to a persistent cache shared by the test workers and the test files that
run themselves in a subprocess, all of which compile many of the same small programs (JAX
dispatches every eager operation as one); the cache's keys hold the JAX version, the backend and
the flags, so a stale entry is never used.
"""

import getpass
import os
import tempfile
from pathlib import Path

from xla_flags import FAST_COMPILE

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402 (after XLA_FLAGS)

try:
    _USER = getpass.getuser()
except (KeyError, OSError):  # no user name in the environment or the password database
    _USER = "user"
CACHE_DIR = Path(tempfile.gettempdir()) / f"implicitvi-tests-jax-cache-{_USER}"
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(CACHE_DIR)  # inherited by the subprocesses
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", str(CACHE_DIR))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
