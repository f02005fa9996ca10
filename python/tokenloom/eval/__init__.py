"""Evaluation harnesses (not the library): Spec-Bench questions and the other bench workloads
(multi-turn, code editing, repeated requests), benchmark-only peer drafters, HumanEval
fill-in-the-middle, the device check (:mod:`.devicecheck`) and the exactness references it
shares with the tests (:mod:`.exactness`, :mod:`.bytesoracle`)."""
