"""Exact projection of a point onto a hyperplane intersected with the box [0, 1]^d (L∞ and L2).

FAB's step needs argmin ‖δ‖_p subject to ⟨w, z + δ⟩ = b and z + δ ∈ [0, 1]^d. After flipping the
sign of w so that the required change c = b − ⟨w, z⟩ is >= 0, both norms reduce to one scalar
equation: the largest ⟨w, δ⟩ reachable at size λ is h(λ) = Σ_i v_i min(λ, u_i), a nondecreasing
concave piecewise-linear function, and the optimum is the smallest λ >= 0 with h(λ) = c.

* L∞ (λ = t, the radius): δ_i = sign(w_i) min(t, r_i), so v_i = |w_i| and u_i = r_i, the room
  r_i that pixel i has in the direction sign(w_i) (1 − z_i or z_i).
* L2 (λ the KKT multiplier): δ_i = clip(λ w_i, −z_i, 1 − z_i) = sign(w_i) min(λ|w_i|, r_i), so
  v_i = w_i² and u_i = r_i / |w_i|.

Sorting u gives h at every breakpoint by prefix sums; the root lies on one linear piece and is
solved for exactly (no bisection). Where even the whole box cannot reach the hyperplane
(h(∞) < c), the result is the box point that comes closest, δ_i = sign(w_i) r_i.

References:
    Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
    attack", ICML 2020 (Section 3.1, the projection onto the hyperplane and the box).
"""

from __future__ import annotations

import torch

#: Norms with an exact projection here.
PROJECTION_NORMS = ("inf", "2")


def _root(v: torch.Tensor, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Per row, the smallest λ >= 0 with Σ_i v_i min(λ, u_i) = c (max u where no λ reaches c).

    Args:
        v: (M, d) weights >= 0.
        u: (M, d) breakpoints >= 0.
        c: (M,) targets >= 0.

    Returns:
        (M,) λ.
    """
    us, order = u.sort(dim=1)
    vs = v.gather(1, order)
    suffix = vs.flip(1).cumsum(1).flip(1)  # Σ_{k >= j} v_k
    prefix = (vs * us).cumsum(1) - vs * us  # Σ_{k < j} v_k u_k
    h = prefix + us * suffix  # h(u_(j)), nondecreasing in j
    j = (h < c[:, None]).sum(1)  # first breakpoint at which h reaches c
    d = u.shape[1]
    inside = j < d
    jc = j.clamp(max=d - 1)[:, None]
    lower = torch.where(j > 0, us.gather(1, (jc - 1).clamp(min=0)).squeeze(1), torch.zeros_like(c))
    upper = us.gather(1, jc).squeeze(1)
    slope = suffix.gather(1, jc).squeeze(1)
    lam = (c - prefix.gather(1, jc).squeeze(1)) / slope.clamp_min(1e-300)
    lam = torch.minimum(torch.maximum(lam, lower), upper)
    lam = torch.where(c > 0, lam, torch.zeros_like(lam))
    return torch.where(inside, lam, us[:, -1])


def project_onto_hyperplane_box(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    """The minimal-norm δ with ⟨w, z + δ⟩ = b and z + δ ∈ [0, 1]^d, row by row.

    Args:
        z: (M, d) points in [0, 1]^d.
        w: (M, d) hyperplane normals.
        b: (M,) offsets.
        norm: ``"inf"`` or ``"2"``.

    Returns:
        (M, d) δ in z's dtype (computed in float64). Where the box cannot reach the hyperplane,
        the box point nearest to it in the direction of w (every pixel moved to its bound).

    Raises:
        ValueError: an unknown norm or mismatched shapes.
    """
    if norm not in PROJECTION_NORMS:
        raise ValueError(f"no exact hyperplane-box projection for norm {norm!r}; choose one of "
                         f"{', '.join(PROJECTION_NORMS)}")
    if z.dim() != 2 or w.shape != z.shape or b.shape != z.shape[:1]:
        raise ValueError(f"expected z, w of shape (M, d) and b of shape (M,), got {tuple(z.shape)}, "
                         f"{tuple(w.shape)}, {tuple(b.shape)}")
    z64, w64 = z.double(), w.double()
    c = b.double() - (w64 * z64).sum(1)
    flip = torch.where(c < 0, -1.0, 1.0).to(c)
    ws = w64 * flip[:, None]
    c = c * flip
    room = torch.where(ws > 0, 1.0 - z64, z64).clamp_min(0.0)
    mag = ws.abs()
    nonzero = mag > 0
    room = torch.where(nonzero, room, torch.zeros_like(room))
    if norm == "inf":
        lam = _root(mag, room, c)
        step = torch.minimum(lam[:, None].expand_as(room), room)
    else:
        u = torch.where(nonzero, room / mag.clamp_min(1e-300), torch.zeros_like(room))
        lam = _root(mag * mag, u, c)
        step = torch.minimum(lam[:, None] * mag, room)
    return (ws.sign() * step).to(z.dtype)


__all__ = ["PROJECTION_NORMS", "project_onto_hyperplane_box"]
