"""The merged drafter, ``generate(method="merged")`` (the default) and, without recycled
candidates, ``"suffix"``: suffix continuations (:mod:`tokenloom.spec.suffix`) and Token
Recycling's candidates (:mod:`tokenloom.spec.recycling`) in one budgeted tree (:mod:`.drafter`),
scored by an acceptance calibration learnt online per source (:mod:`.calibration`); the
factories of the method table (:mod:`.method`) and its chain form for serving stacks
(:mod:`.chains`)."""
