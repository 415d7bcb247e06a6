r"""``ImplicitELBO``: the evidence lower bound for guides with implicit sites.

For particles :math:`(z^{(p)})_{p \le P}` drawn by the guide,

.. math:: \mathrm{ELBO} \approx \frac1P \sum_p \big[\log p(x, z^{(p)}) - \log q_{\text{exact}}(z^{(p)})\big]
   + \sum_{\text{implicit sites}} \mathcal{S}\big(w^{(1:P)}\big),

where :math:`\log q_{\text{exact}}` sums the log densities of explicit guide sites and the exact
(Jacobian) parts of implicit ones, and :math:`\mathcal{S}` is the entropy surrogate
:func:`implicitvi.entropy.surrogate` on each implicit site's latent, with scores from that site's
estimator. Per step, each estimator is first updated on the stop-gradiented particles of the
step (kernel estimators refit, a network takes its ``steps_per_update`` optimizer steps, its
state carried in the SVI state as a mutable site), then queried at those particles; it receives
no gradient from the ELBO. Sites inside a plate are summed over the plate and scaled by the
subsampling factor, like any other site.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.handlers import replay, seed, substitute, trace
from numpyro.infer.elbo import ELBO
from numpyro.infer.util import log_density

from implicitvi.entropy import surrogate
from implicitvi.estimators.base import get_estimator
from implicitvi.infer.primitives import state_name

__all__ = ["ImplicitELBO"]


def _raise_non_finite(names, dtype, step, loss_ok, *site_flags):
    if bool(loss_ok) and all(bool(f) for f in site_flags):
        return np.zeros((), dtype)
    bad = [f"the latent or estimated score of implicit site '{n}'" for n, f in zip(names, site_flags) if not bool(f)]
    what = ", ".join(bad) if bad else "the ELBO loss"
    raise FloatingPointError(
        f"ImplicitELBO: {what} became non-finite at step {int(step)}; lower the learning rate, "
        "or check the model's log density"
    )


def _checked(loss, step, flags, names):
    """``loss``, after a host check that raises when one of the boolean ``flags`` is false.

    The host call sits on the failing branch of a ``lax.cond``, so a finite step costs one
    predicate and no host round trip. It is a ``pure_callback`` whose (zero) result is added to
    the loss, which keeps it alive without the ordered-effect token of ``jax.debug.callback``
    (that token alone made every step several times dearer on CPU). Its inputs carry no
    tangents, so the loss stays differentiable.
    """

    def fail(loss):
        spec = jax.ShapeDtypeStruct((), loss.dtype)
        host = functools.partial(_raise_non_finite, names, loss.dtype)
        return loss + jax.pure_callback(host, spec, step, *flags, vmap_method="sequential")

    return jax.lax.cond(jnp.all(jnp.stack(flags)), lambda loss: loss, fail, loss)


class ImplicitELBO(ELBO):
    """ELBO whose entropy term for implicit guide sites comes from a score estimator.

    Args:
        num_particles: particles per step, drawn in parallel; every implicit site's estimator
            sees all of them at once. A kernel estimator needs two draws at least: two particles
            on a site with a context (it scores each context from its own particles), or two
            particles times plate elements on a site without one (it pools them).
        estimator: ``None`` (default) uses each site's own estimator (see
            :func:`~implicitvi.infer.implicit_sample`); otherwise an estimator or name
            (``"ssm"``, ``"stein"``, ``"ssge"``) used for every implicit site. A name picks a kind:
            a site whose own estimator is of that kind keeps its configuration. A persistent
            estimator object (a network) must equal the site's own, whose state the guide created
            at ``svi.init``.
        check_finite: stop with ``FloatingPointError`` naming the step and the quantity when the
            loss, a latent or an estimated score becomes non-finite (one predicate per step; the
            host is called only on a failing step).

    Use it as any NumPyro ELBO: ``SVI(model, guide, optim, ImplicitELBO(num_particles=16))``.
    """

    can_infer_discrete = False

    def __init__(self, num_particles: int = 16, estimator=None, check_finite: bool = True):
        if isinstance(num_particles, bool) or not isinstance(num_particles, (int, np.integer)):
            raise TypeError(f"num_particles must be an int, got {type(num_particles).__name__}")
        if num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {num_particles}")
        self.estimator = None if estimator is None else get_estimator(estimator)
        # A name picks a kind of estimator; a site whose own estimator is of that kind keeps its
        # own configuration (AutoImplicit's "stein" is Stein(base="normal"), say).
        self._by_name = isinstance(estimator, str)
        self.check_finite = check_finite
        super().__init__(num_particles=num_particles, vectorize_particles=True)

    def _site_estimator(self, name, site, latent, context, per_element):
        own = site["infer"]["estimator"]
        est = own if self.estimator is None else self.estimator
        if self._by_name and isinstance(own, type(self.estimator)):
            est = own
        if est.persistent and est != own:
            raise ValueError(
                f"implicit site '{name}': ImplicitELBO's estimator {type(est).__name__} differs from "
                f"the site's own {type(own).__name__} and keeps state across steps, "
                "which the guide creates at svi.init for the site's own estimator; pass the same "
                "estimator to the guide (AutoImplicit(..., estimator=...) or "
                "implicit_sample(..., estimator=...))"
            )
        # A kernel estimator sees each context's particles, or all particles of all plate
        # elements pooled; either way it needs two draws at least.
        pooled = context is None or est.conditional
        draws = int(np.prod(latent.shape[:-1])) if pooled else per_element
        if not est.persistent and draws < 2:
            where = "a site without a plate" if pooled else "a site with a context"
            raise ValueError(
                f"num_particles must be >= 2 with the kernel estimator {type(est).__name__} "
                f"on {where} (implicit site '{name}'), got {self.num_particles}"
                + ("" if per_element == self.num_particles else f" (and {per_element} draws in all)")
            )
        return est

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        proto_key, est_key, particle_key = jax.random.split(rng_key, 3)
        # One traced run of the guide reads each implicit site's estimator and state name; under
        # jit its computations are dead code.
        prototype = trace(substitute(seed(guide, proto_key), data=param_map)).get_trace(
            *args, **kwargs
        )
        implicit = {
            name: site
            for name, site in prototype.items()
            if site["type"] == "sample" and site["infer"].get("implicit", False)
        }
        mutable_names = [n for n, s in prototype.items() if s["type"] == "mutable"]

        def particle(key):
            model_key, guide_key = jax.random.split(key)
            guide_lp, guide_trace = log_density(seed(guide, guide_key), args, kwargs, param_map)
            params = dict(param_map)
            params.update({n: s["value"] for n, s in guide_trace.items() if s["type"] == "mutable"})
            model_lp, model_trace = log_density(
                replay(seed(model, model_key), guide_trace), args, kwargs, params
            )
            _check_latent_sites(model_trace, guide_trace)
            draws = {}
            for name in implicit:
                site = guide_trace[name]
                scale = 1.0 if site["scale"] is None else site["scale"]
                draws[name] = (
                    site["infer"]["implicit_latent"],
                    site["infer"]["implicit_context"],
                    jnp.asarray(scale),
                    site["infer"]["implicit_entropy_draws"],
                )
            return model_lp - guide_lp, draws

        keys = jax.random.split(particle_key, self.num_particles)
        elbos, draws = jax.vmap(particle)(keys)

        mutable_state = {n: param_map[n] for n in mutable_names if n in param_map}
        entropy = 0.0
        site_ok = []
        for i, (name, site) in enumerate(implicit.items()):
            # (P, *batch, d), (P, *batch, c) or None, (P,), (P, *batch, m, d) or None
            latent, context, scale, extra = draws[name]
            plate_size = int(np.prod(latent.shape[1:-1]))
            if extra is not None:
                # The entropy is estimated at the site's further draws, m per plate element.
                latent = extra
                if context is not None:
                    context = jnp.broadcast_to(
                        context[..., None, :], extra.shape[:-1] + context.shape[-1:]
                    )
            m = 1 if extra is None else extra.shape[-2]  # draws per particle and plate element
            per_element = latent.shape[0] * m
            est = self._site_estimator(name, site, latent, context, per_element)
            d = latent.shape[-1]
            # svi.evaluate passes no mutable state, and the guide's initial one stands in (the
            # loss value does not depend on the scores, see implicitvi.entropy.surrogate).
            stored = prototype[state_name(name)]["value"]
            if stored["template"].shape[-1] != d:
                raise ValueError(
                    f"implicit site '{name}': its latent has {d} dimensions but had "
                    f"{stored['template'].shape[-1]} when SVI was initialised; an implicit site's "
                    "value shape must not change between calls"
                )
            flat = jax.lax.stop_gradient(latent.reshape(-1, d))
            flat_ctx = (
                None
                if context is None
                else jax.lax.stop_gradient(context.reshape(-1, context.shape[-1]))
            )
            key = jax.random.fold_in(est_key, i)
            if est.persistent:
                score_state = est.update(stored["score"], flat, key, flat_ctx)
                scores = est.score(score_state, flat, flat_ctx).reshape(latent.shape)
            elif context is not None and not est.conditional:
                # A kernel estimator of q(w | c): each plate element's P (times m) draws on their own.
                score_state = None
                by_element = latent.reshape(latent.shape[0], plate_size, m, d).swapaxes(0, 1)
                sets = jax.lax.stop_gradient(by_element.reshape(plate_size, -1, d))
                scores = jax.vmap(lambda w: est.score(est.init(key, w)))(sets)
                scores = scores.reshape(by_element.shape).swapaxes(0, 1).reshape(latent.shape)
            else:
                score_state = None
                scores = est.score(est.init(key, flat, flat_ctx)).reshape(latent.shape)
            # Sum over the site's plate elements, mean over particles (and further draws), times
            # the subsample scale.
            entropy = entropy + scale[0] * plate_size * surrogate(latent, scores)
            mutable_state[state_name(name)] = {
                "step": stored["step"] + 1,
                "template": stored["template"],
                "score": score_state if est.persistent else stored["score"],
            }
            site_ok.append(jnp.all(jnp.isfinite(flat)) & jnp.all(jnp.isfinite(scores)))

        loss = -(jnp.mean(elbos) + entropy)
        if self.check_finite:
            step = prototype[state_name(next(iter(implicit)))]["value"]["step"] if implicit else 0
            flags = (jnp.isfinite(loss), *site_ok)
            loss = _checked(loss, step, flags, tuple(implicit))
        return {"loss": loss, "mutable_state": mutable_state or None}


def _check_latent_sites(model_trace, guide_trace):
    for name, site in model_trace.items():
        if site["type"] == "sample" and not site["is_observed"]:
            if site["fn"].support.is_discrete:
                raise ValueError(
                    f"site '{name}' of the model is a discrete latent variable: ImplicitELBO needs "
                    "reparameterized (continuous) latents; marginalize it out or observe it"
                )
            if name not in guide_trace:
                raise ValueError(f"site '{name}' of the model has no counterpart in the guide")
