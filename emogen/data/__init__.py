"""Data: labelled corpora (dataset naming schemes, manifests, speaker splits), the embedded demo corpus and its synthetic voice, and the feature pipeline with its readers."""
