r"""The VAEs of Song, Garg, Shi & Ermon (UAI 2019, §5.3) as NumPyro programs, for
:mod:`mnist_vae_wae`.

VAE: a Bernoulli decoder z → hidden → x (tanh, the paper's code, or softplus) under a
standard-normal prior, with one of four guides:

* ``implicit``: the encoder f([x, ε]) → z, ε ~ N(0, I) with dim ε = dim z, whose density is
  unknown; the entropy gradient comes from a score estimator on a site with context x;
* ``whitened``: z = μ(x) + σ(x) ⊙ w with w = ε + tanh(α) · tanh(g([x, ε])), so that
  H[z | x] = Σ log σ(x) + H[w | x] and only the near-normal w is score-estimated;
* ``semi-implicit``: z = μ(x) + σ(x) ⊙ w with w = ε₂/√2 + shift([x, ε₂]) + s([x, ε₂]) ⊙ ε₁,
  a continuous Gaussian mixture around the Gaussian encoder whose conditional score −ε₁/s is
  known at each draw: a conditional network regressed on it gives the score of q(w | x);
* ``gaussian``: q(z | x) = N(μ(x), diag σ(x)²), the ordinary ELBO.

The estimators are an SSM-VR conditional score network on concat(z, x), one step per model step,
or Stein / SSGE fitted on ``kernel_samples`` encoder draws per x, of which the decoder sees the
first (as the paper's code does).

VAE programs take ``(x, latent_dim, hidden)``, ``x`` a binary batch (batch, data_dim). The WAEs
are in :mod:`wasserstein`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import optax
from jax.example_libraries import stax
from numpyro.distributions import constraints
from numpyro.infer import SVI, RenyiELBO, Trace_ELBO

from implicitvi.estimators import SSGE, ScoreNet, Stein
from implicitvi.infer import ImplicitELBO, implicit_sample

ACTIVATIONS = {"softplus": stax.Softplus, "tanh": stax.Tanh}


def mlp_layers(hidden, out_dim, activation):
    return [layer for width in hidden for layer in (stax.Dense(width), activation)] + [stax.Dense(out_dim)]


def mlp(hidden, out_dim, activation=stax.Tanh):
    """stax ``(init, apply)`` of Dense(h₁) → activation → … → Dense(out_dim)."""
    return stax.serial(*mlp_layers(hidden, out_dim, activation))


def decoder_net(hidden, data_dim, activation="tanh"):
    """The decoder z → hidden → data_dim logits, with ``activation`` ("tanh" or "softplus")."""
    return mlp(hidden, data_dim, ACTIVATIONS[activation])


def noise_mlp(hidden, out_dim, data_dim):
    """The tanh MLP f([x, ε]) → out_dim as ``(init, apply)``, ``apply(params, x, eps)`` with ``x``
    (n, data_dim) and ``eps`` (n, k) or (n, m, k): the first layer's x-part is computed once per
    row, not per draw; the parameters are those of ``mlp(hidden, out_dim)`` on the concatenation."""
    layers = mlp_layers(hidden, out_dim, stax.Tanh)
    init, _ = stax.serial(*layers)
    _, rest = stax.serial(*layers[1:])

    def apply(params, x, eps):
        (w, b), *later = params
        hx = x @ w[:data_dim] + b
        return rest(later, (hx if eps.ndim == 2 else hx[:, None, :]) + eps @ w[data_dim:])

    return init, apply


def bernoulli_decoder(activation="tanh"):
    """Model p(z) p(x | z): z ~ N(0, I), x ~ Bernoulli(logits = decoder(z))."""

    def model(x, latent_dim, hidden):
        batch, data_dim = x.shape
        decode = numpyro.module("decoder", decoder_net(hidden, data_dim, activation), (batch, latent_dim))
        with numpyro.plate("batch", batch):
            z = numpyro.sample("z", dist.Normal(0, 1).expand([latent_dim]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=decode(z)).to_event(1), obs=x)

    return model


def draw_noise(batch, latent_dim, draws, dtype):
    """ε of shape (batch, k), or (batch, draws, k) when the entropy takes ``draws`` draws per x."""
    shape = (batch, latent_dim) if draws is None else (batch, draws, latent_dim)
    return jax.random.normal(numpyro.prng_key(), shape, dtype)


def site_args(w, draws):
    """``latent`` and ``entropy_draws`` of the implicit site for w of :func:`draw_noise`'s shape:
    with further draws, the model sees the first and the entropy term all of them."""
    return (w, None) if draws is None else (w[:, 0], w)


def implicit_encoder(estimator, draws=None):
    """Guide q(z | x) = law of f([x, ε]); its entropy gradient comes from ``estimator`` at
    ``draws`` encoder draws per x if given, else at the one draw."""

    def guide(x, latent_dim, hidden):
        batch, data_dim = x.shape
        net = noise_mlp(hidden, latent_dim, data_dim)
        encode = numpyro.module("encoder", net, (batch, data_dim + latent_dim))
        w, entropy_draws = site_args(encode(x, draw_noise(batch, latent_dim, draws, x.dtype)), draws)
        with numpyro.plate("batch", batch):
            implicit_sample(
                "z", w, support=constraints.real_vector, context=x, estimator=estimator,
                entropy_draws=entropy_draws,
            )

    return guide


def whitened_implicit_encoder(estimator, draws=None):
    """Guide z = μ(x) + σ(x) ⊙ w, w = ε + tanh(α) · tanh(g([x, ε])): only the entropy of w is
    score-estimated, H[z | x] = Σ log σ(x) + H[w | x]. With α = 0 at the start it is the
    Gaussian encoder."""

    def guide(x, latent_dim, hidden):
        batch, data_dim = x.shape
        gaussian = numpyro.module("encoder", mlp(hidden, 2 * latent_dim), (batch, data_dim))
        net = noise_mlp(hidden, latent_dim, data_dim)
        residual = numpyro.module("residual", net, (batch, data_dim + latent_dim))
        gate = numpyro.param("residual_gate", jnp.zeros(()))
        loc, log_scale = jnp.split(gaussian(x), 2, axis=-1)
        eps = draw_noise(batch, latent_dim, draws, x.dtype)
        w, entropy_draws = site_args(eps + jnp.tanh(gate) * jnp.tanh(residual(x, eps)), draws)
        with numpyro.plate("batch", batch):
            implicit_sample(
                "z", loc + jnp.exp(log_scale) * w, latent=w, log_abs_det_jacobian=log_scale.sum(-1),
                support=constraints.real_vector, context=x, estimator=estimator,
                entropy_draws=entropy_draws,
            )

    return guide


MIN_SCALE, SHIFT_BOUND, MIXING_RATE = 0.3, 3.0, 0.1  # the semi-implicit encoder's


def semi_implicit_components(mixing, gate, x, eps2, min_scale=MIN_SCALE, shift_bound=SHIFT_BOUND):
    """The semi-implicit encoder's components ``(m, s)`` of w | x at mixing noise ``eps2`` (n, k) or
    (n, c, k): m = ε₂/√2 + b tanh((g([x, ε₂]) − g([x, 0])) / b), s ∈ (min_scale, √2 − min_scale),
    from ``gate · mixing(x, ε₂) = (g, h)``. Bounded below and centred, so that w cannot become a
    mixture of needles whose score the regression targets −ε₁/s (variance 1/s²) cannot teach, and
    μ(x), σ(x) have no offset or spread of w to cancel (location and scale gauges)."""
    half = 0.5**0.5
    g, h = jnp.split(gate * mixing(x, eps2), 2, axis=-1)
    g0 = jnp.split(gate * mixing(x, jnp.zeros((x.shape[0], eps2.shape[-1]), eps2.dtype)), 2, axis=-1)[0]
    g = shift_bound * jnp.tanh((g - (g0 if eps2.ndim == 2 else g0[:, None])) / shift_bound)
    return half * eps2 + g, min_scale + (half - min_scale) * 2 * jax.nn.sigmoid(h)


def semi_implicit_frame(mixing, gate, x, eps2):
    """The moments of w | x from the components at ``C`` mixing draws ``eps2`` (n, C, k): the
    mean (n, k) of their means and the variance (n, k) of the mixture, Var m + E s², held
    constant (no gradient)."""
    m, s = jax.lax.stop_gradient(semi_implicit_components(mixing, gate, x, eps2))
    return m.mean(1), m.var(1) + (s**2).mean(1)


def row_components(mixing, gate, x_i, e):
    """:func:`semi_implicit_components` ``(m, s)``, each (k,), of one row ``x_i`` (D,) at one
    mixing draw ``e`` (k,)."""
    m, s = semi_implicit_components(mixing, gate, x_i[None], e[None])
    return m[0], s[0]


def linearized_score(mixing, gate, x, eps2, eps1):
    r"""The score of w | x at the draw w = m(ε₂) + s(ε₂) ⊙ ε₁ (all (n, k)) with the mixing map
    linearized at the draw's own ε₂ and s held there:

    m(e) ≈ m + J (e − ε₂), J = ∂m/∂ε₂, so that under e ~ N(0, I), w ~ N(m − J ε₂, J Jᵀ + diag s²)
    and its score at the draw is t = −(J Jᵀ + diag s²)⁻¹ (s ⊙ ε₁ + J ε₂).

    Exact for an affine map with constant s, where t is a function of w alone. Otherwise it
    depends on the draw's ε₂ too, and its error is the map's curvature over the spread of
    ε₂ | w, against −ε₁/s, whose conditional mean is the score but whose own variance is 1/s².
    One forward-mode Jacobian (k tangents) and one k × k solve per draw."""

    def one(x_i, e2, e1):
        m_and_s = lambda e: row_components(mixing, gate, x_i, e)  # noqa: E731
        jac, scale = jax.jacfwd(m_and_s, has_aux=True)(e2)
        cov = jac @ jac.T + jnp.diag(scale**2)
        return -jnp.linalg.solve(cov, scale * e1 + jac @ e2)

    return jax.vmap(one)(x, eps2, eps1)


def mode_score(mixing, gate, x, eps2, w, steps=3):
    r"""The conditional score at the mode of ε₂ | w, x: −(w − m(ê))/s(ê)², with ê found by
    ``steps`` Gauss–Newton steps on log N(e; 0, I) + log N(w; m(e), diag s(e)²) from the draw's
    own ε₂ (``x`` (n, D), ``eps2`` and ``w`` (n, k)); s is held at each iterate:

    e ← e + (Jᵀ S⁻² J + I)⁻¹ (Jᵀ S⁻² (w − m(e)) − e),  J = ∂m/∂ε₂ at e.

    At the mode this is the :func:`linearized_score` of the map linearized there (by the
    Woodbury identity), so for an affine map it is the exact score; once the steps have
    converged it depends on the draw only through w (and the mode reached), unlike the
    linearized score at the draw's own ε₂. One Jacobian and one k × k solve per step."""

    def one(x_i, w_i, e):
        def m_and_both(e):
            m, s = row_components(mixing, gate, x_i, e)
            return m, (m, s)

        def step(e, _):
            jac, (m, s) = jax.jacfwd(m_and_both, has_aux=True)(e)
            precision = jac.T @ (jac / s[:, None] ** 2) + jnp.eye(e.shape[0], dtype=e.dtype)
            return e + jnp.linalg.solve(precision, jac.T @ ((w_i - m) / s**2) - e), None

        # Iterate in the dtype the step returns (the draws' and the mixing map's, promoted).
        dtype = jnp.result_type(e, w_i, *jax.tree.leaves(jax.eval_shape(m_and_both, e)))
        e, _ = jax.lax.scan(step, e.astype(dtype), None, length=steps)
        m, s = row_components(mixing, gate, x_i, e)
        return -(w_i - m) / s**2

    return jax.vmap(one)(x, w, eps2)


ENTROPY_SCORES = ("network", "linearized", "mode")


def semi_implicit_encoder(estimator, mixing_rate=MIXING_RATE, frame_components=0,
                          entropy_score="network"):
    """Guide z = μ(x) + σ(x) ⊙ w, w | x, ε₂ ~ N(m, diag s²) of :func:`semi_implicit_components`,
    whose gate starts at zero (w ~ N(0, I): the Gaussian encoder) and is stored divided by
    ``mixing_rate`` (under RMSProp it moves at that fraction of the rate). H[z | x] =
    Σ log σ(x) + H[w | x]; the site carries −ε₁/s, the regression target of ``estimator``.
    With ``frame_components = C > 0`` the score is estimated in the frame
    w̃ = (w − m̄(x)) / v̄(x)^½ of w's moments over C fresh mixing draws
    (:func:`semi_implicit_frame`; a constant affine map given x, so H[w | x] = H[w̃ | x] +
    ½ Σ log v̄(x)), where the network's normal base −w̃ is the moment-matched Gaussian's score
    and the network learns only what q(w | x) adds to it; the target is v̄^½ ⊙ (−ε₁/s).
    With ``entropy_score="linearized"`` or ``"mode"`` no network is fitted: the entropy
    gradient takes :func:`linearized_score` or :func:`mode_score` at each draw as the score of
    w (``estimator`` and the frame are then unused)."""
    if entropy_score not in ENTROPY_SCORES:
        raise ValueError(f"entropy_score must be one of {ENTROPY_SCORES}, got {entropy_score!r}")

    def guide(x, latent_dim, hidden):
        batch, data_dim = x.shape
        gaussian = numpyro.module("encoder", mlp(hidden, 2 * latent_dim), (batch, data_dim))
        net = noise_mlp(hidden, 2 * latent_dim, data_dim)
        mixing = numpyro.module("mixing", net, (batch, data_dim + latent_dim))
        gate = mixing_rate * numpyro.param("mixing_gate", jnp.zeros(()))
        key_mix, key_noise, *key_frame = jax.random.split(numpyro.prng_key(), 2 + bool(frame_components))
        eps2 = jax.random.normal(key_mix, (batch, latent_dim), x.dtype)
        eps1 = jax.random.normal(key_noise, (batch, latent_dim), x.dtype)
        loc, log_scale = jnp.split(gaussian(x), 2, axis=-1)
        m, s = semi_implicit_components(mixing, gate, x, eps2)
        w = m + s * eps1
        latent, log_det, target = w, log_scale.sum(-1), -eps1 / s
        if entropy_score == "linearized":
            entropy = {"score": linearized_score(mixing, gate, x, eps2, eps1)}
        elif entropy_score == "mode":
            entropy = {"score": mode_score(mixing, gate, x, eps2, w)}
        else:
            if frame_components:
                probes = jax.random.normal(key_frame[0], (batch, frame_components, latent_dim), x.dtype)
                mean, var = semi_implicit_frame(mixing, gate, x, probes)
                sd = jnp.sqrt(var)
                latent, log_det, target = (w - mean) / sd, log_det + 0.5 * jnp.log(var).sum(-1), target * sd
            entropy = {"context": x, "estimator": estimator, "conditional_score": target}
        with numpyro.plate("batch", batch):
            implicit_sample(
                "z", loc + jnp.exp(log_scale) * w, latent=latent, log_abs_det_jacobian=log_det,
                support=constraints.real_vector, **entropy,
            )

    return guide


def semi_implicit_estimator(lr):
    """The semi-implicit encoder's conditional score network of w given x, fitted by
    regression (one RMSProp ``lr`` step per model step)."""
    return ScoreNet(objective="regression", hidden=(256, 256), conditional=True, base="normal",
                    optimizer=optax.rmsprop(lr))


def gaussian_encoder(x, latent_dim, hidden):
    """Guide q(z | x) = N(μ(x), diag σ(x)²), the ordinary VAE."""
    batch, data_dim = x.shape
    encode = numpyro.module("encoder", mlp(hidden, 2 * latent_dim), (batch, data_dim))
    loc, log_scale = jnp.split(encode(x), 2, axis=-1)
    with numpyro.plate("batch", batch):
        numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))


def vae_svi(encoder, estimator, lr, activation="tanh", kernel_samples=100, frame_components=0,
            entropy_score="network", iwae_particles=1):
    """SVI (RMSProp ``lr``) of the VAE with ``encoder`` in {implicit, whitened, semi-implicit,
    gaussian} and, for the first two, ``estimator`` in {ssm, stein, ssge} (the semi-implicit
    encoder's is a conditional network fitted by regression, in the moment frame of
    ``frame_components`` mixing draws if that is positive; or, by ``entropy_score``, the
    linearized score or the score at the mode). The Gaussian encoder is trained by the ELBO or,
    with ``iwae_particles = K > 1``, by the importance-weighted bound of K draws per image
    (Burda et al. 2016; NumPyro's ``RenyiELBO`` at α = 0), log (1/K) Σₖ p(x, zₖ)/q(zₖ | x)."""
    if not isinstance(iwae_particles, int) or iwae_particles < 1:
        raise ValueError(f"iwae_particles must be an int >= 1, got {iwae_particles!r}")
    model = bernoulli_decoder(activation)
    if encoder == "gaussian":
        elbo = Trace_ELBO() if iwae_particles == 1 else RenyiELBO(alpha=0.0, num_particles=iwae_particles)
        return SVI(model, gaussian_encoder, optax.rmsprop(lr), elbo)
    if iwae_particles != 1:
        raise ValueError(f"iwae_particles applies to the gaussian encoder only, got encoder={encoder!r}")
    if encoder == "semi-implicit":
        est = semi_implicit_estimator(lr)
        guide = semi_implicit_encoder(est, frame_components=frame_components, entropy_score=entropy_score)
        return SVI(model, guide, optax.rmsprop(lr), ImplicitELBO(num_particles=1))
    # The whitened encoder's w is near-normal: its estimators shrink towards the normal score.
    base = "normal" if encoder == "whitened" else "zero"
    draws = None if estimator == "ssm" else kernel_samples
    if estimator == "ssm":
        est = ScoreNet(objective="ssm_vr", num_projections=1, hidden=(256, 256), conditional=True,
                       optimizer=optax.rmsprop(lr), base=base)
    elif estimator == "stein":
        est = Stein(eta=1e-3, base=base)
    else:
        est = SSGE(eta=1e-3, threshold=0.99, base=base)
    guide = whitened_implicit_encoder if encoder == "whitened" else implicit_encoder
    return SVI(model, guide(est, draws), optax.rmsprop(lr), ImplicitELBO(num_particles=1))
