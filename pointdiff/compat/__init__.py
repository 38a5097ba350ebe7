"""Interoperability with other projects' released weights: OpenAI Point-E (``compat.pointe``:
conversion and loading; ``compat.pointe_pipeline``: its released pipeline) and OpenAI Shap-E
(``compat.shape``). Import from those modules."""
