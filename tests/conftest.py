"""Test configuration: float64 on, so dense references can be compared to 1e-5.

Float32 paths are tested by passing float32 arrays explicitly (dtypes are preserved).
"""

import jax

jax.config.update("jax_enable_x64", True)
