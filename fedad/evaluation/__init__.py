"""Scoring and what is reported: the one scoring entry point (:mod:`.scores`, reused across
simulated sites by :mod:`.shared_scores`), scoring with gradients and refinements
(:mod:`.differentiable`), metrics (:mod:`.metrics`), a site scoring new images
(:mod:`.predict`), a run's and a sweep's report (:mod:`.report`, :mod:`.sweep_report`),
their plots (:mod:`.plots`), the HTML page of either (:mod:`.html_report`, its parts in
:mod:`.html_page`, a site's per-image scores and cases in :mod:`.cases`) and whether a
validation score can rank anything (:mod:`.chance`)."""
