import jax
import jax.numpy as jnp
import pytest

from implicitvi.infer import nonfinite
from implicitvi.infer.nonfinite import JIT_ERRORS



def guarded(x, step):
    return nonfinite.guard(
        jnp.sum(x), step, {"the input": jnp.all(jnp.isfinite(x))}, where="test", advice="fix it"
    )


def test_a_finite_value_passes_through_and_stays_differentiable():
    x = jnp.array([1.0, 2.0])
    assert float(jax.jit(guarded)(x, 3)) == 3.0
    assert jnp.all(jax.grad(guarded)(x, 3) == 1.0)


def test_a_failing_step_raises_with_the_quantity_and_the_step():
    message = r"test: the input became non-finite at step 7; fix it"
    with pytest.raises(JIT_ERRORS, match=message) as info:
        jax.block_until_ready(jax.jit(guarded)(jnp.array([1.0, jnp.nan]), 7))
    with pytest.raises(FloatingPointError, match=message):
        nonfinite.reraise(info.value)


def test_reraise_leaves_other_errors_alone():
    nonfinite.reraise(RuntimeError("something else"))
