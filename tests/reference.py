"""Dense float64 NumPy versions of the kernel estimators, written from the papers' formulas.

Deliberately naive (explicit gradient tensors, full solves of the enlarged systems) so that they
share no code path with the library.
"""

import numpy as np


def kernel(name, x, y, h):
    r2 = np.sum((x[:, None, :] - y[None, :, :]) ** 2, axis=-1)
    if name == "rbf":
        return np.exp(-r2 / (2 * h**2))
    return (1 + r2 / h**2) ** -0.5


def kernel_grad_first(name, x, y, h):
    """G[i, j] = ∇_x k(x, y_j) at x = x_i, shape (n, m, d)."""
    diff = x[:, None, :] - y[None, :, :]
    k = kernel(name, x, y, h)
    if name == "rbf":
        return -diff / h**2 * k[..., None]
    return -diff / h**2 * (k**3)[..., None]


def median_heuristic(x):
    i, j = np.triu_indices(len(x), k=1)
    return np.median(np.linalg.norm(x[i] - x[j], axis=1))


def stein_in_sample(x, h, eta, name="rbf", base="zero"):
    """Li & Turner (2018), eq. 7: Ĝ = −(K + ηI)⁻¹ ⟨∇, K⟩, ⟨∇, K⟩_i = Σ_j ∇_{x_j} k(x_j, x_i).

    base="normal": the same ridge regression for the residual r = s + x, whose Stein identity
    reads K r ≈ K x − ⟨∇, K⟩; the estimate is −x + r̂.
    """
    k = kernel(name, x, x, h)
    grad_k = kernel_grad_first(name, x, x, h).sum(axis=0)
    if base == "normal":
        return -x + np.linalg.solve(k + eta * np.eye(len(x)), k @ x - grad_k)
    return -np.linalg.solve(k + eta * np.eye(len(x)), grad_k)


def stein_out_of_sample(x, queries, h, eta, name="rbf", base="zero"):
    """§3.4: each query joins the samples; its row of the enlarged system's solution."""
    return np.stack(
        [stein_in_sample(np.vstack([x, q[None]]), h, eta, name, base)[-1] for q in queries]
    )


def ssge(x, queries, h, eta=0.0, num_eigen=None, threshold=0.99, name="rbf", base="zero"):
    """Shi, Sun & Zhu (2018): Nyström eigenfunctions of K + ηI, ĝ = Σ_j β_j ψ_j.

    base="normal": the expansion of r = s + x, β^r_j = E[ψ_j r] = −E[∇ψ_j] + E[ψ_j x].
    """
    m = len(x)
    lam, u = np.linalg.eigh(kernel(name, x, x, h) + eta * np.eye(m))
    lam, u = lam[::-1], u[:, ::-1]
    if num_eigen is None:
        frac = np.cumsum(lam) / np.sum(lam)
        num_eigen = int(np.argmax(frac >= threshold)) + 1
    lam, u = lam[:num_eigen], u[:, :num_eigen]

    def psi(z):  # (n, J)
        return np.sqrt(m) * kernel(name, z, x, h) @ u / lam

    def grad_psi(z):  # (n, J, d)
        return np.sqrt(m) * np.einsum("nmd,mj->njd", kernel_grad_first(name, z, x, h), u) / lam[
            None, :, None
        ]

    beta = -grad_psi(x).mean(axis=0)  # (J, d)
    if base == "normal":
        beta = beta + psi(x).T @ x / m
        return psi(queries) @ beta - queries, num_eigen
    return psi(queries) @ beta, num_eigen
