"""The paper's evaluation: the accuracy-under-attack core that training shares (`core`),
the suite of white-box and black-box attacks (`suite`), gradient-masking checks
(`sanity`), exported-artifact evaluation (`artifact_eval`), AutoAttack verification
(`verify_autoattack`) and reports (`report`, `robustbench`, `paper_results`)."""
