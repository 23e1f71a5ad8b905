"""The lambda-Harmonic reward of RPO (DESIGN.md section 1), on plain tensors.

Embeddings are L2-normalised rows; every score is mapped from cosine [-1, 1] to [0, 1].
Only tensor methods are used, so `harmonic` serves labels and selection without importing torch.
"""

from __future__ import annotations


def _unit(cos):
    return (cos + 1.0) / 2.0


def align_i(image_emb, ref_emb, leave_out=None):
    """ALIGN-I(x) = mean_j (cos(f_V(x), f_V(x_j)) + 1) / 2 over the reference images.

    `leave_out[i]` is the index of the reference that image i *is* (or -1): a reference
    image is scored against the other references only, else it would score itself 1.0.
    A subject of one photo has no other reference: its photo scores itself, 1.0.
    """
    sims = _unit(image_emb @ ref_emb.T)  # (n_images, n_refs)
    if leave_out is None:
        return sims.mean(dim=1)
    mask = sims.new_ones(sims.shape).bool()
    rows = (leave_out >= 0).nonzero().flatten()
    mask[rows, leave_out[rows]] = False
    alone = mask.sum(dim=1) == 0
    mask[alone] = True
    return (sims * mask).sum(dim=1) / mask.sum(dim=1)


def align_t(image_emb, text_emb):
    """ALIGN-T(x, c) = (cos(f_V(x), f_T(c without V)) + 1) / 2, row i against text i."""
    return _unit((image_emb * text_emb).sum(dim=-1))


def harmonic(align_i_score, align_t_score, lam: float):
    """r_lambda = 1 / (lambda / ALIGN-I + (1 - lambda) / ALIGN-T).

    lambda = 0 is ALIGN-T alone and lambda = 1 ALIGN-I alone; the limits are taken
    exactly so that a zero score on the ignored side cannot divide by zero.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    if lam == 0.0:
        return align_t_score
    if lam == 1.0:
        return align_i_score
    return 1.0 / (lam / align_i_score + (1.0 - lam) / align_t_score)
