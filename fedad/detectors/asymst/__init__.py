"""DDPM-synthesised defects and an asymmetric teacher-student (seed 000, first abstract):
a frozen teacher (:mod:`.teacher`), a student of another architecture that maps an image to
the teacher's features of its clean version (:mod:`.student`), a segmentation head on their
discrepancy (:mod:`.head`), their losses (:mod:`.losses`), the site's labelled defects
(:mod:`.synthesis`) and the detector on the contract (:mod:`.detector`)."""
