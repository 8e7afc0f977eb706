"""F2PAD (Tao, Xu, Du, "Feature-to-pixel anomaly detection", seed 002): split an image into
a normal part and a sparse anomaly, ``x = n + a`` (Eq. 1), by optimising ``n`` so that its
features score as normal (Eq. 12). :mod:`.losses` holds the objective's terms, :mod:`.prior`
the pixel prior fitted on a site's own training pixels, :mod:`.sharing` the local
gradient-sharing direction and :mod:`.step` the adaptive step (Sec. III-D)."""
