"""Round-off bounds of float32 arithmetic: tolerances that hold on every CPU kernel family.

Two float32 evaluations of the same network that differ only in the order of their sums (another SIMD width:
``ATEN_CPU_CAPABILITY=avx512``, ``avx2``, ``default``; another batch size or thread count, hence another GEMM
blocking) differ by rounding alone. Higham's bound (*Accuracy and Stability of Numerical Algorithms*, 2nd ed.,
Eq. 3.5) for a dot product of length ``K`` is ``|fl(x.y) - x.y| <= gamma_K |x|.|y|`` with ``gamma_K ~= K u`` and
``u = 2**-24`` the unit round-off of float32; errors of a chain of such products add to first order. So a chain of
``matmuls`` products whose longest accumulation is ``length`` stays within ``matmuls * length * u`` of the exact
result, relative to the magnitude of the values involved, and two such evaluations within twice that.
"""

from __future__ import annotations

#: float32's unit round-off (half the spacing of floats in [1, 2)).
UNIT_ROUNDOFF = 2.0 ** -24


def chain_tolerance(matmuls: int, length: int) -> float:
    """Relative bound on the difference of two float32 evaluations of ``matmuls`` chained products of length
    ``length`` that differ only in summation order: ``2 * matmuls * length * u``."""
    return 2 * matmuls * length * UNIT_ROUNDOFF
