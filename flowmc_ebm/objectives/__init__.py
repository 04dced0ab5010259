"""Training objectives: contrastive maximum likelihood for EBMs (`contrastive`), determinant-free
score matching (`score_matching`) and the energy score for flows (`energy_score`)."""
