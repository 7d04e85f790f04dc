"""Smoothness of attention: empirical local Lipschitz constants as the length n grows.

After Castin, Ablin & Peyre (ICML 2024, "How Smooth Is Attention?", arXiv:2312.14820; reference
code github.com/vcastin/how-smooth-is-attention). For softmax self-attention on tokens in a ball of
radius R the local Lipschitz constant can grow like sqrt(n) (worst case, tight for reasonable n),
grows more slowly on realistic inputs (about n^(1/4) on the paper's text), and stops depending on
n in the mean-field regime (n so large that no token keeps a fixed share of the attention).

Modules, one job each:

* :mod:`.estimate` -- the Jacobian's spectral norm by power iteration (and exactly, small sizes);
  the fitted exponent of ``L ~ n^alpha``.
* :mod:`.maps` -- the measured map ``X -> Attention(X W_Q, X W_K, X W_V)`` for any registered
  variant, and the closed-form softmax bound.
* :mod:`.inputs` -- random, adversarial and searched inputs in the ball of radius R.
* :mod:`.hidden` -- hidden states of real task sequences at an encoder layer's attention input.
* :mod:`.measure` -- one (variant, pattern, length) measurement for ``lra-bench``.

The exponent table, findings and figures from the records are :mod:`lra.report.smoothness`.
"""
from .estimate import exact_lipschitz, growth_exponent, lipschitz_estimate, power_iteration
from .inputs import adversarial_rows, search_rows, sphere_rows
from .maps import Projections, projected_map, random_projections, softmax_bound

__all__ = ["Projections", "adversarial_rows", "exact_lipschitz", "growth_exponent", "lipschitz_estimate",
           "power_iteration", "projected_map", "random_projections", "search_rows", "softmax_bound", "sphere_rows"]
