"""Token Recycling (arXiv 2408.08696): the adjacency matrix and its update rules
(:mod:`.recycler`), its drafter (:mod:`.drafter`), the factory of
``generate(method="recycling")`` (:mod:`.method`) and its chain form for serving stacks
(:mod:`.chains`)."""
