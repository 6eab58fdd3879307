"""The paper's evaluation: the accuracy-under-attack core that training shares (`core`),
the suite of white-box and black-box attacks (`suite`, one runner per column of
`rslad_tf.common.vocabulary.EVAL_COLUMNS`), the typed eval JSON (`result`), its command
line (`cli`), gradient-masking checks (`sanity`), exported-artifact evaluation
(`artifact_eval`), AutoAttack verification (`verify_autoattack`) and reports (`report`,
`robustbench`, `paper_results`)."""
