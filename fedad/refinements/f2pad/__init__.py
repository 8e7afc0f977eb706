"""F2PAD (Tao, Xu, Du, "Feature-to-pixel anomaly detection", seed 002): split an image into
a normal part and a sparse anomaly, ``x = n + a`` (Eq. 1), by optimising ``n`` so that its
features score as normal (Eq. 12).

:mod:`.losses` holds the objective's terms (Eq. 8-12), :mod:`.prior` the pixel prior fitted
on a site's own training pixels (Eq. 9), :mod:`.feature_loss` the detectors' ``l_n``
(Eq. 4-7), :mod:`.sharing` the local gradient-sharing direction (Eq. 13-14), :mod:`.step`
the adaptive step (Eq. 15), :mod:`.solver` the optimiser (Sec. III-D), :mod:`.init` the
initial normal image, :mod:`.algorithm` Algorithm 1 for one image, :mod:`.refinement` a set
of images (the :class:`~fedad.evaluation.differentiable.Refiner`) and :mod:`.site`
what a site does with ``refine=f2pad`` at evaluation."""
