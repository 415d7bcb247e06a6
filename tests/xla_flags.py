"""XLA flags of the test suite, in a module that imports nothing, so that ``conftest.py`` can set
them before JAX's backend starts."""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
"""XLA flags that halve compile time (the whole suite runs with them, see ``conftest.py``);
dtypes and partitioning do not depend on them."""
