"""FedDyMem (Chen et al.): projection (:mod:`.projection`), memory generator
(:mod:`.generator`), metric loss (:mod:`.loss`), memory-reduce (:mod:`.reduce`), the head
(:mod:`.head`), the site's training (:mod:`.client`), the detector on the contract
(:mod:`.detector`) and its config section (:mod:`.config`). Nothing is imported here, so the
config section loads without the networks."""
