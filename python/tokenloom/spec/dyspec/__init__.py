"""DySpec (arXiv 2410.11744): the dynamic tree builder (:mod:`.builder`), static comparison shapes
(:mod:`.static`), draft models (:mod:`.drafts`) and the drafter (:mod:`.drafter`)."""
