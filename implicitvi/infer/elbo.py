r"""``ImplicitELBO``: the evidence lower bound for guides with implicit sites.

For particles :math:`(z^{(p)})_{p \le P}` drawn by the guide,

.. math:: \mathrm{ELBO} \approx \frac1P \sum_p \big[\log p(x, z^{(p)}) - \log q_{\text{exact}}(z^{(p)})\big]
   + \sum_{\text{implicit sites}} \mathcal{S}\big(w^{(1:P)}\big),

where :math:`\log q_{\text{exact}}` sums the log densities of explicit guide sites and the exact
(Jacobian) parts of implicit ones, and :math:`\mathcal{S}` is the entropy surrogate
:func:`implicitvi.entropy.surrogate` on each implicit site's latent, with scores from that site's
estimator (or, where the sampler gives them, its own scores). Per step, each estimator is first
updated on the stop-gradiented particles of the step (kernel estimators refit, a network takes
its ``steps_per_update`` optimizer steps, its state carried in the SVI state as a mutable site),
then queried at those particles; it receives no gradient from the ELBO. Sites inside a plate
are summed over the plate and scaled by the subsampling factor, like any other site.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.handlers import replay, seed
from numpyro.infer.elbo import ELBO
from numpyro.infer.util import log_density
from numpyro.util import check_model_guide_match

from implicitvi import _checks
from implicitvi.entropy import surrogate
from implicitvi.estimators.base import get_estimator, state_matches
from implicitvi.estimators.per_context import PerContext
from implicitvi.infer import nonfinite, sharding
from implicitvi.infer.primitives import shared_key, state_name

__all__ = ["ImplicitELBO"]


class _Draws(NamedTuple):
    """One implicit site's values over the particles of a step."""

    latent: jax.Array  # (P, *batch, d)
    context: jax.Array | None  # (P, *batch, c)
    scale: jax.Array  # (P,) the site's subsample scale
    extra: jax.Array | None  # (P, *batch, m, d) entropy_draws
    target: jax.Array | None  # conditional scores, shaped as the draws the entropy is taken at
    score: jax.Array | None  # the scores themselves, when the sampler gives them; same shape
    state: Any  # the estimator state the particle's guide saw, with a leading P axis


class ImplicitELBO(ELBO):
    """ELBO whose entropy term for implicit guide sites comes from a score estimator.

    Args:
        num_particles: particles per step, drawn in parallel; every implicit site's estimator
            sees all of them at once. A kernel estimator needs two draws at least: two particles
            on a site with a context (it scores each context from its own particles), or two
            particles times plate elements on a site without one (it pools them).
        estimator: ``None`` (default) uses each site's own estimator (see
            :func:`~implicitvi.infer.implicit_sample`); otherwise an estimator or name
            (``"ssm"``, ``"stein"``, ``"ssge"``) used for every implicit site (but those whose
            sampler gives its scores, ``implicit_sample(..., score=...)``). A name picks a kind:
            a site whose own estimator is of that kind keeps its configuration. A persistent
            estimator (a network) must be able to continue the state the site's own estimator
            created at ``svi.init`` (same state layout, see
            :func:`~implicitvi.estimators.state_matches`).
        check_finite: stop with a ``FloatingPointError`` naming the step and the quantity when
            the loss, a latent or an estimated score becomes non-finite (one predicate per step;
            the host is called only on a failing step). Under ``jit`` the error reaches the
            caller as JAX's runtime error carrying that message;
            :func:`~implicitvi.infer.run_minibatch` re-raises the ``FloatingPointError``.
        vectorize_particles: as in NumPyro's ELBOs: ``True`` (``vmap``), ``False``
            (``lax.map``) or a callable ``(fn, keys) -> outputs``.
        mesh: shard the particles over devices (:mod:`implicitvi.infer.sharding`): ``None``
            (default, no sharding), ``"local"`` (all local devices), a sequence of devices, or a
            :class:`jax.sharding.Mesh` (along its first axis). ``num_particles`` must be a
            multiple of the number of devices. The estimators still fit on all particles.

    Mutable sites of the model and guide (``numpyro.mutable``, the state of a Flax or Equinox
    module) are carried as :class:`~numpyro.infer.Trace_ELBO` carries them: updated from the
    particle with ``num_particles=1``, left unchanged (with a warning) with more particles.

    Use it as any NumPyro ELBO: ``SVI(model, guide, optim, ImplicitELBO(num_particles=16))``.
    """

    can_infer_discrete = False

    def __init__(
        self,
        num_particles: int = 16,
        estimator=None,
        check_finite: bool = True,
        vectorize_particles=True,
        mesh=None,
    ):
        _checks.check_positive_int(num_particles, "num_particles")
        self.sharding = sharding.as_mesh(mesh)
        sharding.check_divisible(num_particles, self.sharding, "num_particles")
        self.estimator = None if estimator is None else get_estimator(estimator)
        # A name picks a kind of estimator; a site whose own estimator is of that kind keeps its
        # own configuration (AutoImplicit's "stein" is Stein(base="normal"), say).
        self._by_name = isinstance(estimator, str)
        self.check_finite = check_finite
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        # Keys 1 and 2 of three are those this ELBO has always drawn, so fits reproduce.
        shared, est_key, particle_key = jax.random.split(rng_key, 3)
        sites = {}  # implicit site name → its guide site, read while the particles are traced
        particle = functools.partial(
            self._particle, param_map=param_map, model=model, guide=shared_key(guide, rng_key=shared),
            args=args, kwargs=kwargs, sites=sites,
        )
        keys = sharding.shard_leading(jax.random.split(particle_key, self.num_particles), self.sharding)
        elbos, draws, mutable = self.vectorize_particles_fn(particle, keys)

        mutable_state = self._user_mutable_state(param_map, mutable)
        entropy = 0.0
        site_checks = {}
        for i, (name, site) in enumerate(sites.items()):
            term, state, ok = self._site_entropy(
                jax.random.fold_in(est_key, i), name, site, draws[name]
            )
            entropy = entropy + term
            mutable_state[state_name(name)] = state
            site_checks[f"the latent or estimated score of implicit site '{name}'"] = ok

        loss = -(jnp.mean(elbos) + entropy)
        if self.check_finite:
            step = mutable_state[state_name(next(iter(sites)))]["step"] - 1 if sites else 0
            loss = nonfinite.guard(
                loss,
                step,
                {"the ELBO loss": jnp.isfinite(loss), **site_checks},
                where="ImplicitELBO",
                advice="lower the learning rate, or check the model's log density",
            )
        return {"loss": loss, "mutable_state": mutable_state or None}

    def _particle(self, key, *, param_map, model, guide, args, kwargs, sites):
        """One particle: ``log p − log q_exact``, the implicit sites' draws, the mutable values."""
        model_key, guide_key = jax.random.split(key)
        guide_lp, guide_trace = log_density(seed(guide, guide_key), args, kwargs, param_map)
        mutable = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "mutable"}
        model_lp, model_trace = log_density(
            replay(seed(model, model_key), guide_trace), args, kwargs, {**param_map, **mutable}
        )
        _check_latent_sites(model_trace, guide_trace)
        check_model_guide_match(model_trace, guide_trace)
        mutable.update({n: s["value"] for n, s in model_trace.items() if s["type"] == "mutable"})
        draws = {}
        for name, site in guide_trace.items():
            if site["type"] == "sample" and site["infer"].get("implicit", False):
                sites[name] = site
                infer = site["infer"]
                draws[name] = _Draws(
                    infer["implicit_latent"],
                    infer["implicit_context"],
                    jnp.asarray(1.0 if site["scale"] is None else site["scale"]),
                    infer["implicit_entropy_draws"],
                    infer.get("implicit_conditional_score"),
                    infer.get("implicit_score"),
                    mutable.pop(state_name(name)),
                )
        return model_lp - guide_lp, draws, mutable

    def _user_mutable_state(self, param_map, mutable):
        """The model's and guide's own mutable sites after this step, as Trace_ELBO keeps them."""
        if not mutable:
            return {}
        if self.num_particles == 1:
            return jax.tree.map(lambda x: x[0], mutable)
        warnings.warn(
            f"ImplicitELBO: the mutable sites {sorted(mutable)} are not updated with "
            f"num_particles={self.num_particles} > 1 (as in Trace_ELBO); use num_particles=1 "
            "with entropy_draws on the implicit sites to update them",
            stacklevel=2,
        )
        return {n: param_map[n] if n in param_map else jax.tree.map(lambda x: x[0], v)
                for n, v in mutable.items()}

    def _site_estimator(self, name, own, latent, context, per_element):
        est = own if self.estimator is None else self.estimator
        if self._by_name and isinstance(own, type(self.estimator)):
            est = own
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
        return est if pooled else PerContext(est, per_element)

    def _site_entropy(self, key, name, site, draws: _Draws):
        """The site's entropy surrogate, its new estimator state, and whether all was finite."""
        latent, context, scale, extra, target, given, stored = draws
        stored = jax.tree.map(lambda x: x[0], stored)  # the same in every particle
        plate_size = int(np.prod(latent.shape[1:-1]))
        if extra is not None:
            # The entropy is estimated at the site's further draws, m per plate element.
            latent = extra
            if context is not None:
                context = jnp.broadcast_to(context[..., None, :], extra.shape[:-1] + context.shape[-1:])
        m = 1 if extra is None else extra.shape[-2]  # draws per particle and plate element
        d = latent.shape[-1]
        if stored["template"].shape[-1] != d:
            raise ValueError(
                f"implicit site '{name}': its latent has {d} dimensions but had "
                f"{stored['template'].shape[-1]} when SVI was initialised; an implicit site's "
                "value shape must not change between calls"
            )
        if given is not None:
            # The sampler gave its scores: nothing to fit.
            scores = jax.lax.stop_gradient(given)
            term = scale[0] * plate_size * surrogate(latent, scores)
            ok = jnp.all(jnp.isfinite(jax.lax.stop_gradient(latent))) & jnp.all(jnp.isfinite(scores))
            return term, {**stored, "step": stored["step"] + 1}, ok
        own = site["infer"]["estimator"]
        est = self._site_estimator(name, own, latent, context, latent.shape[0] * m)
        arrange, back = _rows(latent.shape, plate_size, m, by_element=isinstance(est, PerContext))
        rows, ctx = arrange(latent), arrange(context)
        if est.persistent and est is not own and not state_matches(est, stored["score"], rows[:1], None if ctx is None else ctx[:1]):
            raise ValueError(
                f"implicit site '{name}': ImplicitELBO's estimator {type(est).__name__} cannot "
                f"continue the state that the site's own {type(own).__name__} created at svi.init "
                "(its layout differs); pass the same estimator to the guide "
                "(AutoImplicit(..., estimator=...) or implicit_sample(..., estimator=...))"
            )
        if getattr(est, "needs_targets", False):
            if target is None:
                raise ValueError(
                    f"implicit site '{name}': the estimator {type(est).__name__} is fitted on "
                    "conditional scores, but the site has none; pass conditional_score=... to "
                    "implicit_sample, or use another estimator"
                )
            state = est.update(key, stored["score"], rows, ctx, targets=arrange(target))
        else:
            state = est.update(key, stored["score"], rows, ctx)
        scores = back(est.score(state, rows, ctx))
        # Sum over the site's plate elements, mean over particles (and further draws), times
        # the subsample scale.
        term = scale[0] * plate_size * surrogate(latent, scores)
        new = {
            "step": stored["step"] + 1,
            "template": stored["template"],
            "score": state if est.persistent else stored["score"],
        }
        ok = jnp.all(jnp.isfinite(rows)) & jnp.all(jnp.isfinite(scores))
        return term, new, ok


def _rows(shape, plate_size, m, by_element):
    """For draws of ``shape`` ``(P, *batch, [m,] d)``: the map to stop-gradiented ``(n, ·)`` rows
    (of the draws, their context or targets), particle-major, or element-major when
    ``by_element`` (each plate element's ``P m`` draws consecutive, for :class:`PerContext`); and
    the map taking ``(n, d)`` scores back."""
    d = shape[-1]

    def arrange(x):
        if x is None:
            return None
        x = jax.lax.stop_gradient(x)
        if by_element:
            x = x.reshape((x.shape[0], plate_size, m, x.shape[-1])).swapaxes(0, 1)
        return x.reshape(-1, x.shape[-1])

    def back(scores):
        if by_element:
            scores = scores.reshape(plate_size, shape[0], m, d).swapaxes(0, 1)
        return scores.reshape(shape)

    return arrange, back


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
