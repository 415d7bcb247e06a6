"""NumPyro integration: implicit guide sites, the implicit-aware ELBO and an implicit autoguide."""

from implicitvi.infer.autoguide import AutoImplicit
from implicitvi.infer.elbo import ImplicitELBO
from implicitvi.infer.primitives import implicit_sample

__all__ = ["AutoImplicit", "ImplicitELBO", "implicit_sample"]
