"""The published Grad-ECLIP pipeline's own pieces, beside its method (``grad_eclip_official``): the
one-head rewrite of the last block (``rewrite``) and the keep-size input with interpolated position
embeddings (``keepsize``). The audit imports them from here; nothing here imports the audit."""
