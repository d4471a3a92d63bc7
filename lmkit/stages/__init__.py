"""Pipeline stages: each a plain ``run(config) -> Artifact`` that the CLI and tests call."""
