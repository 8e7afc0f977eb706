"""RowFed (seed 000's second abstract, arXiv 2510.14413): personalised federated
multivariate regression with sparse row-wise fusion, in the core (no Flower). Only the
abstract is public: everything here is a reconstruction on FPFC's linearised ADMM (docs:
seed-methods.md section 4), each choice fixed a priori and written in its docstring."""
