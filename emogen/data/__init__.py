"""Data: corpora (dataset naming schemes, manifests, the embedded demo corpus) and the feature pipeline with its readers."""
