"""Evaluation harnesses (not the library): Spec-Bench questions and HumanEval fill-in-the-middle."""
