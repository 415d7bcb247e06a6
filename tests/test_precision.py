"""Precision and reproducibility.

Float64: under ``jax_enable_x64`` (on for the whole suite, see ``conftest.py``) every estimator,
objective, the entropy surrogate, ImplicitELBO and both autoguides compute in float64 throughout,
with no float32 value anywhere in between. Every computation is traced once and its whole program
(sub-programs of ``scan``, ``cond``, ``vmap``, custom derivatives included) is searched for a
floating value that is not float64; its outputs are checked the same way. The two guides are also
compiled and fitted for a few SVI steps (the estimators, compiled, would cost half a minute more
on two cores; their dtypes are fixed when traced). Each fit runs twice from the same key, the
second time from a new guide, and both fits' parameters and draws are compared bitwise.

Determinism: the same PRNG key gives bitwise the same score-estimator update on CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

STEPS = 3  # SVI steps per fit


# --- float64 throughout ---------------------------------------------------------------------


def _walk(jaxpr, where, problems, f64):
    """Record in ``problems`` every equation of ``jaxpr`` (and its sub-programs) that takes or
    gives a floating value of a dtype other than float64."""
    import jax.numpy as jnp

    for eqn in jaxpr.eqns:
        for v in [*eqn.invars, *eqn.outvars]:
            dtype = getattr(getattr(v, "aval", None), "dtype", None)
            if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and dtype != f64:
                problems.append(f"{where}: a {dtype} value in {eqn.primitive}")
                break
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if hasattr(sub, "jaxpr") and hasattr(sub, "consts"):  # a closed program
                    _walk(sub.jaxpr, where, problems, f64)
                elif hasattr(sub, "eqns"):
                    _walk(sub, where, problems, f64)


def float64_report() -> dict:
    """Trace, and for the guides run, everything on float64 inputs; return the problems found,
    the guides' fits (``"fits"``) and the messages of calls that mix dtypes (``"mixed"``)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.infer import SVI

    from implicitvi import objectives
    from implicitvi.entropy import surrogate
    from implicitvi.estimators import SSGE, ScoreNet, Stein
    from implicitvi.estimators.per_context import PerContext
    from implicitvi.infer import (
        AutoImplicit,
        AutoSemiImplicit,
        ImplicitELBO,
        implicit_sample,
    )
    from implicitvi.nets import MLP

    f64 = jnp.dtype(jnp.float64)
    problems: list[str] = []

    def check_leaves(tree, where):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            dtype = jnp.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
            if jnp.issubdtype(dtype, jnp.floating) and dtype != f64:
                problems.append(f"{where}{jax.tree_util.keystr(path)}: {dtype}")

    def trace(where, fn, *args):
        traced = jax.jit(fn).trace(*args)
        _walk(traced.jaxpr.jaxpr, where, problems, f64)
        check_leaves(traced.out_info, f"{where} output")
        return traced

    # The search sees a float32 value deep inside nested programs.
    def island(x):
        def inner(c, _):
            return c + jnp.sin(c.astype(jnp.float32)).astype(c.dtype), None

        return jax.lax.cond(x[0] > 0, lambda y: jax.lax.scan(inner, y, None, 2)[0], lambda y: y, x)

    trace("self-test", jax.vmap(island), jnp.ones((2, 3)))
    if not problems or not all(p.startswith("self-test") for p in problems):
        return {"problems": ["the float32 search missed a float32 value: " + repr(problems)]}
    problems.clear()

    key = jax.random.PRNGKey(0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 2)))
    q = jnp.asarray(rng.normal(size=(3, 2)))
    ctx = jnp.asarray(rng.normal(size=(8, 1)))
    check_leaves((x, q, ctx), "inputs")

    net = MLP((4,))
    params = net.init(key, 2, 2)
    check_leaves(params, "MLP.init with the default dtype")
    for name, fn in objectives.OBJECTIVES.items():
        kw = {"targets": -x} if name == "regression" else {}

        def value_and_grad(p, x, fn=fn, kw=kw):
            return jax.value_and_grad(lambda p: fn(lambda z: net.apply(p, z), x, key, **kw))(p)

        trace(f"objective {name}", value_and_grad, params, x)

    for name in objectives.OBJECTIVES:
        est = ScoreNet(objective=name, hidden=(4,), steps_per_update=2, fit_steps=2)
        kw = {"targets": -x} if name == "regression" else {}

        def score_net(x, q, est=est, kw=kw):
            state = est.init(key, x)
            state = est.fit(key, est.update(key, state, x, **kw), x, **kw)
            return state, est.score(state, q)

        trace(f"ScoreNet(objective={name!r})", score_net, x, q)

    conditional = ScoreNet(hidden=(4,), conditional=True, fit_steps=2)

    def conditional_net(x, c):
        state = conditional.init(key, x, c)
        state = conditional.fit(key, conditional.update(key, state, x, c), x, c)
        return state, conditional.score(state, x[:3], c[:3])

    trace("ScoreNet(conditional=True)", conditional_net, x, ctx)

    for est in (Stein(), Stein(base="normal", kernel="imq"), SSGE(), SSGE(base="normal", kernel="imq")):
        per_context = PerContext(est, 4)

        def kernel(x, q, c, est=est, per_context=per_context):
            state = est.update(key, est.init(key, x), x)
            grouped = per_context.update(key, per_context.init(key, x, c), x, c)
            return (state, est.score(state, x), est.score(state, q), grouped,
                    per_context.score(grouped, x, c), per_context.score(grouped, x[:6], c[:6]))

        trace(repr(est), kernel, x, q, ctx)

    trace("entropy surrogate", jax.value_and_grad(lambda a: surrogate(a * x, -x)), jnp.asarray(1.5))

    # ImplicitELBO and the guides on a model with a constrained site.
    data = jnp.asarray(rng.normal(size=(5,)))

    def model(y):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        s = numpyro.sample("s", dist.LogNormal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(z.sum(), s), obs=y)

    guides = {
        "AutoImplicit": lambda: AutoImplicit(model, hidden=(4,), num_samples=5),
        "AutoSemiImplicit": lambda: AutoSemiImplicit(model, hidden=(4,), num_samples=5),
    }
    fits = {}
    for name, make_guide in guides.items():
        guide = make_guide()
        svi = SVI(model, guide, optax.adam(1e-2), ImplicitELBO(num_particles=2))

        def step(state, data, svi=svi, guide=guide):
            state, loss = svi.update(state, data)
            return state, loss, guide.sample_posterior(key, svi.get_params(state), sample_shape=(3,))

        def summaries(params, guide=guide):
            return guide.median(params), guide.quantiles(params, [0.25, 0.75])

        state = svi.init(key, data)
        trace(f"{name} median and quantiles", summaries, svi.get_params(state))
        compiled = trace(f"{name} SVI step", step, state, data).lower().compile()
        for run in range(2):
            if run:  # the second fit from a new guide, initialised from the same key
                svi = SVI(model, make_guide(), optax.adam(1e-2), ImplicitELBO(num_particles=2))
                state = svi.init(key, data)
            check_leaves(state, f"{name} svi.init")
            for _ in range(STEPS):
                state, *out = compiled(state, data)
                check_leaves((state, out), f"{name} SVI step")
            for part, tree in (("params", svi.get_params(state)), ("draws", out[1]), ("loss", out[0])):
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
                    fits[f"{name}/{run}/{part}{jax.tree_util.keystr(path)}"] = leaf

    # Kernel estimators inside the ELBO, and an amortized site with a context (traced only).
    def amortized(c):
        a = numpyro.param("a", 0.2)
        with numpyro.plate("items", c.shape[0]):
            eps = jax.random.normal(numpyro.prng_key(), c.shape)
            implicit_sample("z", a * c + eps, context=c[:, None], estimator=Stein())

    def local_model(c):
        with numpyro.plate("items", c.shape[0]):
            numpyro.sample("z", dist.Normal(0.0, 1.0))

    others = {
        "AutoImplicit(estimator='stein')": (model, AutoImplicit(model, hidden=(4,), estimator="stein"), data),
        "AutoSemiImplicit(estimator='ssge')": (model, AutoSemiImplicit(model, hidden=(4,), estimator="ssge"), data),
        "amortized Stein site": (local_model, amortized, ctx[:3, 0]),
    }
    for name, (m, guide, arg) in others.items():
        svi = SVI(m, guide, optax.adam(1e-2), ImplicitELBO(num_particles=2))
        state = svi.init(key, arg)
        check_leaves(state, f"{name} svi.init")
        trace(f"{name} SVI step", svi.update, state, arg)

    # Mixed dtypes: a state created from float32 samples meets float64 data.
    x32 = jnp.ones((6, 2), jnp.float32) + jnp.arange(12, dtype=jnp.float32).reshape(6, 2) / 7
    x64 = x32.astype(jnp.float64)
    mixed = {}
    calls = {
        "Stein.score": lambda: Stein().score(Stein().init(key, x32), x64),
        "SSGE.score": lambda: SSGE().score(SSGE().init(key, x32), x64),
        "ScoreNet.score": lambda: ScoreNet(hidden=(4,)).score(ScoreNet(hidden=(4,)).init(key, x32), x64),
        "ScoreNet.update": lambda: ScoreNet(hidden=(4,)).update(key, ScoreNet(hidden=(4,)).init(key, x32), x64),
        "ScoreNet.update targets": lambda: ScoreNet(hidden=(4,), objective="regression").update(
            key, ScoreNet(hidden=(4,), objective="regression").init(key, x32), x32, targets=x64
        ),
    }
    for name, call in calls.items():
        try:
            call()
            mixed[name] = None
        except TypeError as e:
            mixed[name] = str(e)
    return {"problems": list(dict.fromkeys(problems)), "mixed": mixed,
            "fits": {k: np.asarray(v) for k, v in fits.items()}}


@pytest.fixture(scope="module")
def float64_run():
    import jax

    assert jax.config.jax_enable_x64, "conftest.py turns x64 on for the suite"
    return float64_report()


def test_float64_end_to_end(float64_run):
    problems = float64_run["problems"]
    assert not problems, f"{len(problems)} values not float64:\n" + "\n".join(problems[:30])
    fits = float64_run["fits"]
    for guide in ("AutoImplicit", "AutoSemiImplicit"):
        # loc, scale_tril, the sampler network's weights; draws of both sites; the loss.
        names = [k.removeprefix(f"{guide}/0/") for k in fits if k.startswith(f"{guide}/0/")]
        for part in ("params['auto_loc']", "params['auto_sampler'][0][0]", "draws['s']", "loss"):
            assert part in names, (part, names)
    for name, value in fits.items():
        assert value.dtype == np.float64, name
        assert np.all(np.isfinite(value)), name


def test_mixed_dtypes_under_x64_are_named(float64_run):
    mixed = float64_run["mixed"]
    arg = {"ScoreNet.update": "samples", "ScoreNet.update targets": "targets"}
    for call, message in mixed.items():
        name = arg.get(call, "queries")
        assert message == (
            f"{name} must have dtype float32, the dtype of the samples the estimator's state was "
            "created from, got float64; cast one to the other"
        ), call


def test_guides_fitted_twice_from_the_same_key_agree_bitwise(float64_run):
    fits = float64_run["fits"]
    first = sorted(k for k in fits if "/0/" in k)
    assert {k.split("/")[0] for k in first} == {"AutoImplicit", "AutoSemiImplicit"}
    for name in first:
        np.testing.assert_array_equal(fits[name], fits[name.replace("/0/", "/1/")], err_msg=name)


# --- score estimators: same key, same update, bitwise ---------------------------------------


def _estimators():
    import optax

    from implicitvi.estimators import SSGE, ScoreNet, Stein

    return {
        "ScoreNet": ScoreNet(hidden=(8,), steps_per_update=2, optimizer=optax.adam(1e-2)),
        "ScoreNet-regression": ScoreNet(objective="regression", hidden=(8,), base="normal", steps_per_update=2),
        "Stein": Stein(),
        "SSGE": SSGE(),
    }


@pytest.mark.parametrize("name", sorted(_estimators()))
def test_estimator_update_is_bitwise_reproducible(name):
    # In float32, the benchmarks' precision (the guides above are fitted in float64).
    import jax

    est = _estimators()[name]
    rng = np.random.default_rng(1)
    x0, x1, q, targets = (rng.normal(size=(12, 2)).astype(np.float32) for _ in range(4))
    kw = {"targets": targets} if getattr(est, "needs_targets", False) else {}

    @jax.jit
    def update_and_score(key, x0, x1, q):
        init_key, update_key = jax.random.split(key)
        state = est.update(update_key, est.init(init_key, x0), x1, **kw)
        return state, est.score(state, q)

    key = jax.random.PRNGKey(3)
    first = jax.tree.leaves(update_and_score(key, x0, x1, q))
    second = jax.tree.leaves(update_and_score(key, x0, x1, q))
    assert first[-1].dtype == np.float32
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Another key moves a network (its initialisation, projections), not a closed-form fit.
    other = jax.tree.leaves(update_and_score(jax.random.PRNGKey(4), x0, x1, q))
    assert np.array_equal(other[-1], first[-1]) == (not est.persistent)

