"""
The long-run fuzz harness: `targets` holds one function per codec and parser,
each checking invariants on one input; `main` hands a target to atheris, and
the ``run`` script drives every target in turn. The normal suite replays the
seed corpus and the regression inputs through the same targets
(tests/test_properties.py), so the harness cannot silently rot.
"""
