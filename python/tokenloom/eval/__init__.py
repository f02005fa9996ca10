"""Evaluation harnesses (not the library): Spec-Bench questions and the other bench workloads
(multi-turn, code editing, repeated requests), benchmark-only peer drafters, and HumanEval
fill-in-the-middle."""
