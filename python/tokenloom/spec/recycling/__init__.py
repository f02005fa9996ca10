"""Token Recycling (arXiv 2408.08696): the adjacency-matrix state (:mod:`.recycler`) and its
drafter (:mod:`.drafter`)."""
