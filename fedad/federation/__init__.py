"""Federation without Flower: what travels (:mod:`.records`), how it is exchanged
(:mod:`.exchanges`, one module per exchange), a site's data (:mod:`.site_data`), what a site
does with a message (:mod:`.site`), what the server does with the replies (:mod:`.server`)
and the round loop over both (:mod:`.rounds`). ``clients/`` and ``server/`` only move
Flower records to and from these."""
