"""The Generator component: OpenAI-compatible serving, text and model-creation runs."""
