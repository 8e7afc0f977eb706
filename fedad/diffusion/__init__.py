"""A DDPM trained on normal images only (Ho et al. 2020), on ``diffusers``: the model
(:mod:`.unet`), its noise schedule (:mod:`.schedule`), the training loss and loop
(:mod:`.loss`, :mod:`.train`) and the reverse process with a constant-variance
perturbation that turns it into a defect generator (:mod:`.sample`, :mod:`.defects`).
No Flower here: sites train it and weight exchanges federate it like any other module."""
