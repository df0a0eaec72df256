"""latentcot inside other tools: lm-evaluation-harness (`integrations.lm_eval`)."""
